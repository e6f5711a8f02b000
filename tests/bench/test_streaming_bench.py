"""``omniforcing bench --suite streaming`` runs at tiny size, prints its tables and writes the headline JSON."""

from __future__ import annotations

import json

import torch

from omniforcing.cli import main


def test_streaming_bench_quick_prints_tables_and_writes_json(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        main(["bench", "--suite", "streaming", "--quick", "true", "--out", str(tmp_path / "bench.json")])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    for title in ("Student streaming vs bidirectional teacher", "Per-block latency vs stream position",
                  "Overlap of generation and decoding", "Model FLOPs per generated second"):
        assert f"### {title}" in printed
    report = json.loads((tmp_path / "bench.json").read_text())
    summary = report["summary"]
    assert report["suite"] == "streaming" and report["machine"]["threads"] == 1
    for key in ("speedup_vs_teacher", "latency_flatness", "time_to_first_block_s", "overlap_speedup",
                "flops_per_generated_second_student", "matmul_peak_tflops_float32", "utilisation_student"):
        assert summary[key] > 0, key
    # the rolling cache stops growing once the window is full; the never-evicting one keeps growing
    assert summary["kv_cache_mib_never_evicts_at_end"] > summary["kv_cache_mib_window"]
    # the teacher spends 64 whole-clip forwards where the student spends 5 per block: counted, not timed
    assert summary["flops_per_generated_second_teacher"] > summary["flops_per_generated_second_student"]
