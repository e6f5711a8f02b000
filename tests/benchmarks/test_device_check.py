"""benchmarks/device_check.py (issue 12's device check) runs on the CPU at the tiny size, so it cannot rot before
the next GPU session: every stage, the eager-vs-captured comparison and the derived ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_check.py"


def run_check(tmp_path: Path, *backends: str) -> dict:
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--preset", "tiny", "--grid", "2x2",
                           "--backends", *backends, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_eager_check_writes_every_figure_the_ratios_need(tmp_path):
    result = run_check(tmp_path)
    assert result["errors"] == {} and result["preset"] == "tiny" and result["grid"] == "2x2"
    assert set(result["stage_wall_s"]) == {"teacher eager", "student eager", "flops", "decoding"}
    student = result["student_eager"]
    assert len(student["block_ms"]) == 14  # blocks 0..13: the last two against a full, evicting 10-s window
    assert student["clip_generate_s"] == pytest.approx(sum(student["block_ms"][:11]) / 1e3)
    assert student["speedup_vs_teacher_eager"] == pytest.approx(result["teacher_eager_s"] / student["clip_generate_s"])
    assert 0 < student["utilisation"] and 0 < result["utilisation_teacher_eager"]
    assert result["student_flops_per_block"] > 0 and result["teacher_flops_per_step"] > result["student_flops_per_block"]
    assert len(result["student_decode_ms"]) == 11 and result["teacher_decode_s"] > 0  # blocks 0..10: the clip
    assert student["speedup_with_decoding_vs_teacher_eager"] == pytest.approx(
        (result["teacher_eager_s"] + result["teacher_decode_s"])
        / (student["clip_generate_s"] + result["student_clip_decode_s"]))
    assert "_eager_latents" not in result  # the latents kept for the comparison are not written out


@pytest.mark.slow
def test_the_captured_student_is_compared_with_eager(tmp_path):
    """aot_eager traces the block step as the CUDA backends do (without generating code): same latents."""
    result = run_check(tmp_path, "aot_eager")
    assert result["errors"] == {}
    captured = result["student_aot_eager"]
    assert captured["max_abs_diff_vs_eager"] == 0.0 and captured["warm_up_stream_s"] > 0
    assert len(captured["block_ms"]) == 14
