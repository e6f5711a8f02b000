"""``omniforcing bench --suite data`` measures the shard loader and synthetic generation, and terminates even
though the synthetic training stream is endless."""

from __future__ import annotations

import json


from omniforcing.cli import main


def test_data_bench_quick_prints_tables_and_writes_json(tmp_path, capsys):
    main(["bench", "--suite", "data", "--quick", "true", "--out", str(tmp_path / "data.json")])
    printed = capsys.readouterr().out
    assert "### AVDataModule train loader" in printed and "### Synthetic data generation" in printed
    summary = json.loads((tmp_path / "data.json").read_text())["summary"]
    for key in ("loader_clips_per_s_workers_0", "loader_clips_per_s_workers_2", "synth_in_memory_clips_per_s",
                "synth_to_shards_clips_per_s"):
        assert summary[key] > 0, key
