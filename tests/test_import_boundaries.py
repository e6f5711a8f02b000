"""Layering: the pure layers never import Lightning (DESIGN.md house rule); the sampling layer sits below
``methods/`` and ``inference/``, and ``methods/`` never imports ``inference/`` (issue 12)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["models", "diffusion", "sampling", "methods", "codecs", "metrics", "inference", "serving"]


def import_all(packages: list[str], blocked: list[str]) -> subprocess.CompletedProcess:
    """Import every module of ``omniforcing.<package>`` in a fresh interpreter where ``blocked`` modules fail."""
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if any(name == b or name.startswith(b + '.') for b in {blocked!r}):\n"
        "            raise ImportError('blocked in this test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pkgutil, importlib, omniforcing\n"
        f"for pkg in {packages!r}:\n"
        "    mod = importlib.import_module('omniforcing.' + pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, mod.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def test_pure_layers_import_without_lightning():
    result = import_all(PURE, ["lightning", "pytorch_lightning"])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("packages", "blocked"), [
    (["sampling"], ["omniforcing.methods", "omniforcing.inference", "omniforcing.training"]),
    (["methods"], ["omniforcing.inference", "omniforcing.training"]),
])
def test_sampling_sits_below_methods_and_inference(packages, blocked):
    result = import_all(packages, blocked)
    assert result.returncode == 0, result.stderr


def test_the_boundary_check_can_fail():
    assert import_all(["inference"], ["omniforcing.sampling"]).returncode != 0
