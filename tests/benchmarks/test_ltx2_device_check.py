"""benchmarks/ltx2_device_check.py (issue 13's device check) runs on the CPU at the tiny size, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ltx2_device_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("ltx2_device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_check_runs_every_step_on_the_cpu_and_writes_its_figures(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--blocks", "1", "--tiny", "--out",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == {}
    assert set(result["step_wall_s"]) == {"1 blocks: build", "1 blocks: stream", "1 blocks: build teacher and critic",
                                          "1 blocks: stage3_checkpointed", "1 blocks: stage3_no_checkpoint"}
    depth = result["depths"]["1"]
    stream = depth["stream"]
    assert len(stream["block_ms"]) == result["window_seconds"] + 1 + 3  # blocks past the window are timed
    assert stream["full_window_block_ms"] > 0 and stream["cache_bytes"] > 0
    for variant in ("stage3_checkpointed", "stage3_no_checkpoint"):
        step = depth[variant]
        assert step["loss_finite"] and step["params_with_grad"] > 0
        # the rollout covers the clip (--tiny: 1 s): 1 + 3 video and 1 + 25 audio latents (v1 prefix)
        assert result["clip_seconds"] == 1
        assert step["video_latents"][:2] == [1, 4] and step["audio_latents"][:2] == [1, 26]
        assert step["grad_bytes"] == result["stage3_checkpointed"]["grad_bytes"]["measured"]["1"]  # same params
    fit = result["stream_ms"]
    assert fit["per_block"] == pytest.approx(stream["full_window_block_ms"])  # one depth: value / depth
    assert fit["at_48_blocks"] == pytest.approx(48 * fit["per_block"])
    assert fit["budget_25fps"]["block_ms"] == pytest.approx(960.0) and fit["budget_20fps"]["block_ms"] == 1200.0


def test_the_fit_over_depths_separates_the_blocks_from_the_rest():
    script = load_script()
    fit = script.line_fit({2: 12.0 + 2 * 5.0, 4: 12.0 + 4 * 5.0})
    assert fit["per_block"] == pytest.approx(5.0) and fit["outside_blocks"] == pytest.approx(12.0)
    assert fit["at_48_blocks"] == pytest.approx(12.0 + 48 * 5.0)
    assert fit["upper_bound_at_48_blocks"] == pytest.approx((12.0 + 4 * 5.0) / 4 * 48)
    noisy = script.line_fit({1: 10.0, 2: 9.0})  # timing noise larger than a block's cost: no extrapolation
    assert noisy["at_48_blocks"] is None and noisy["upper_bound_at_48_blocks"] == pytest.approx(9.0 * 24)


def test_a_step_past_its_budget_is_stopped():
    script = load_script()
    with pytest.raises(script.StepTimeout):
        with script.time_limit(0.05):
            while True:
                time.sleep(0.01)
