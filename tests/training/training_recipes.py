"""Recipe helpers shared by the training tests (a uniquely named module: every test folder has a conftest)."""

from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

TINY_TEACHER = ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml", "model/tiny.yaml",
                "debug/tiny_cpu.yaml"]


def recipe_args(files: list[str]) -> list[str]:
    """``-c recipes/<file>`` for each file."""
    args: list[str] = []
    for name in files:
        args += ["-c", str(RECIPES / name)]
    return args
