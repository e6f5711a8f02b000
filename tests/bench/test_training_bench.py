"""``omniforcing bench --suite training`` builds every available method from its recipe and times a step."""

from __future__ import annotations

import json

import pytest
import torch

from omniforcing.cli import main


@pytest.mark.slow
def test_training_bench_quick_times_every_method(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        main(["bench", "--suite", "training", "--quick", "true", "--out", str(tmp_path / "training.json")])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "### Training step time and memory per method" in printed and "not available" not in printed
    summary = json.loads((tmp_path / "training.json").read_text())["summary"]
    for key in ("teacher", "dmd", "ode_regression", "self_forcing", "mutual_forcing"):
        assert summary[f"step_seconds_{key}"] > 0 and summary[f"held_mib_{key}"] >= 0
    assert summary["synthetic_loader_clips_per_s_0_workers"] > 0 and summary["teacher_clips_per_s"] > 0
