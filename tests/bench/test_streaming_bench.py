"""``omniforcing bench --suite streaming`` runs at tiny size, prints its tables and writes the headline JSON."""

from __future__ import annotations

import json

import pytest
import torch

from omniforcing.bench.flops import fastest_dtype
from omniforcing.bench.report import Report, Table
from omniforcing.bench.timing import DeviceTimer
from omniforcing.cli import main
from omniforcing.commands import bench as bench_command


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
    assert summary["dtype"] == faster and f"({faster})" in printed
    for key in ("speedup_vs_teacher", "latency_flatness", "time_to_first_block_s", "overlap_speedup",
                "flops_per_generated_second_student", "matmul_peak_tflops_float32", "utilisation_student"):
        assert summary[key] > 0, key
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


def test_bench_all_keeps_finished_suites_when_one_fails(tmp_path, monkeypatch, capsys):
    def run(suite, quick, threads):
        if suite == "training":
            raise RuntimeError("training broke")
        return Report(suite, tables=[Table(f"{suite} table", ["x"], [[1.0]])], summary={"value": 1.0})

    monkeypatch.setattr(bench_command, "_run", run)
    with pytest.raises(RuntimeError, match="training broke"):
        main(["bench", "--suite", "all", "--out", str(tmp_path / "all.json")])
    assert "### streaming table" in capsys.readouterr().out  # printed before the failure
    report = json.loads((tmp_path / "all.json").read_text())
    assert report["summary"] == {"value": 1.0} and report["suite"] == "streaming"
