"""``omniforcing bench --suite streaming`` runs at tiny size, prints its tables and writes the headline JSON."""

from __future__ import annotations

import json

import pytest
import torch

from omniforcing.bench.flops import fastest_dtype
from omniforcing.bench.streaming import StreamingBenchConfig, bench_models, student_settings
from omniforcing.bench.timing import DeviceTimer
from omniforcing.cli import main
from omniforcing.models.presets import parameter_counts


def test_streaming_bench_quick_prints_tables_and_writes_json(tmp_path, capsys):
    main(["bench", "--suite", "streaming", "--quick", "true", "--out", str(tmp_path / "bench.json")])
    printed = capsys.readouterr().out
    for title in ("Student streaming vs bidirectional teacher", "Per-block latency vs stream position",
                  "Overlap of generation and decoding", "Model FLOPs per generated second",
                  "Student block time by dtype"):
        assert f"### {title}" in printed
    report = json.loads((tmp_path / "bench.json").read_text())
    summary = report["summary"]
    assert report["suite"] == "streaming" and report["machine"]["threads"] == 1
    assert report["machine"]["cores"] >= 1 and "torch" in report["machine"] and "cpu_bf16_units" in report["machine"]
    # the models ran in the dtype whose measured matmul peak was higher, whichever that was on this machine
    faster = "bfloat16" if summary["matmul_peak_tflops_bfloat16"] > summary["matmul_peak_tflops_float32"] else "float32"
    assert summary["dtype"] == faster and f"video grid, {faster})" in printed
    for key in ("speedup_vs_teacher", "block_latency_ms", "time_to_first_block_s", "real_time_factor_student",
                "video_fps_with_audio", "utilisation_student", "utilisation_teacher", "latency_flatness",
                "overlap_speedup", "flops_per_generated_second_student", "matmul_peak_tflops_float32"):
        assert summary[key] > 0, key
    assert report["status"] == "complete" and report["failures"] == []
    # 1 + 24 frames of the 1-s clip, decoded with their audio, over the student's wall time
    assert summary["video_fps_with_audio"] == pytest.approx(25 / summary["student_seconds"])
    # the rolling cache stops growing once the window is full; the never-evicting one keeps growing
    assert summary["kv_cache_mib_never_evicts_at_end"] > summary["kv_cache_mib_window"]
    # the teacher spends 64 whole-clip forwards where the student spends 5 per block: counted, not timed
    assert summary["flops_per_generated_second_teacher"] > summary["flops_per_generated_second_student"]


def test_fastest_dtype_follows_the_measured_peaks():
    assert fastest_dtype({torch.float32: (0.17, 1024), torch.bfloat16: (0.001, 256)}) == torch.float32
    assert fastest_dtype({torch.float32: (50.0, 8192), torch.bfloat16: (700.0, 8192)}) == torch.bfloat16


def test_device_timer_measures_the_region_on_cpu():
    with DeviceTimer(torch.device("cpu")) as timer:
        torch.mm(torch.ones(64, 64), torch.ones(64, 64))
    assert timer.ms > 0
    manual = DeviceTimer(torch.device("cpu")).start()
    torch.mm(torch.ones(64, 64), torch.ones(64, 64))
    assert manual.stop() == manual.ms > 0


def test_preset_and_video_grid_reach_the_models_and_the_codec():
    config = StreamingBenchConfig.make(quick=True, preset="small", video_grid=(2, 3))
    student, teacher, codec = bench_models(config, torch.device("cpu"))
    assert student.video_grid == teacher.video_grid == codec.video.latent_size == (2, 3)
    assert student.causal and not teacher.causal
    assert sum(p.numel() for p in teacher.parameters()) == parameter_counts("small", video_grid=(2, 3))["total"]


def test_streaming_bench_runs_at_a_non_square_video_grid_in_the_requested_dtype(tmp_path, capsys):
    main(["bench", "--suite", "streaming", "--quick", "true", "--video-grid", "2x3", "--dtype", "float32",
          "--out", str(tmp_path / "b.json")])
    printed = capsys.readouterr().out
    assert "(tiny preset, 2x3 video grid, 1-s clip + lead)" in printed and "2x3 video grid, float32)" in printed
    summary = json.loads((tmp_path / "b.json").read_text())["summary"]
    assert summary["video_grid"] == "2x3" and summary["preset"] == "tiny" and summary["dtype"] == "float32"
    assert summary["block_latency_ms"] > 0


@pytest.mark.parametrize("compile", [True, False, None])
def test_the_compile_option_reaches_the_student_settings(compile):
    settings = student_settings(StreamingBenchConfig.make(quick=True, compile=compile), overlap=True)
    assert settings.compile is compile and settings.overlap and settings.window_seconds == 2.0
