"""Fixtures for LightningModule tests: the tiny teacher recipe run through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_omniforcing_modules import export_tiny_teacher
from training_recipes import TINY_TEACHER, recipe_args


@pytest.fixture
def tiny_teacher_args(tmp_path: Path) -> list[str]:
    """CLI arguments of a tiny CPU teacher run writing into ``tmp_path``."""
    return [*recipe_args(TINY_TEACHER), f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    """An exported tiny bidirectional teacher (perturbed weights) in ``tmp_path / "teacher"``."""
    return export_tiny_teacher(tmp_path)
