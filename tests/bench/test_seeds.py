"""Benchmark tables over seeds: mean, spread, and differences against the seed noise floor."""

from __future__ import annotations

import math
import statistics

import pytest

from omniforcing.bench.mutual_forcing import summarize
from omniforcing.bench.report import Report, Table
from omniforcing.bench.seeds import aggregate_rows, compare_rows, read_seed_reports

COLUMNS = ["sampler", "NFE/block", "fd_video_stats"]


def write_report(path, rows):
    table = Table("t", COLUMNS)
    for row in rows:
        table.add(*row)
    Report("x", [table]).save_json(path)


@pytest.fixture
def runs(tmp_path):
    """Three seeds; row "a" is 10, 12, 14 and row "b" 10, 10.5, 11: a - b = 0, 1.5, 3."""
    for seed, (a, b) in enumerate([(10.0, 10.0), (12.0, 10.5), (14.0, 11.0)]):
        write_report(tmp_path / f"seed{seed}" / "main.json", [["real", "-", 1.0], ["a", 5, a]])
        write_report(tmp_path / f"seed{seed}" / "ablation.json", [["real", "-", 1.0], ["a", 5, b]])
    return tmp_path


def test_rows_are_read_per_seed_with_prefixes_and_shared_rows_once(runs):
    rows = read_seed_reports(runs, {"main": "", "ablation": "abl: "}, shared_rows=("real",))
    assert set(rows.values) == {"real", "a", "abl: a"}
    assert rows.seeds["a"] == [0, 1, 2]
    assert rows.values["a"]["fd_video_stats"] == [10.0, 12.0, 14.0]
    assert rows.values["abl: a"]["fd_video_stats"] == [10.0, 10.5, 11.0]
    assert math.isnan(rows.values["real"]["NFE/block"][0])  # text cells are not numbers


def test_aggregate_gives_mean_and_sample_standard_deviation(runs):
    rows = read_seed_reports(runs, {"main": ""}, shared_rows=("real",))
    table = aggregate_rows(rows, "over seeds")
    by_name = {row[0]: row for row in table.rows}
    assert by_name["a"][1] == 3
    assert by_name["a"][3] == f"{12.0:.4g} ± {statistics.stdev([10, 12, 14]):.2g}"
    assert by_name["a"][2] == "5 ± 0"
    assert by_name["real"][2] == "-"


def test_a_difference_is_a_result_only_beyond_the_noise_floor(runs, tmp_path):
    rows = read_seed_reports(runs, {"main": "", "ablation": "abl: "})
    table = compare_rows(rows, [("a", "abl: a"), ("a", "missing")], ["fd_video_stats"], "diff")
    assert len(table.rows) == 1  # the pair with a missing row is skipped
    # mean difference 1.5; floor = max(std(10,12,14) = 2, std(10,10.5,11) = 0.5) = 2 -> within noise
    assert table.rows[0][2] == "+1.5 (floor 2; within noise)"
    # double the spread of the differences but not of "a": a seed-to-seed floor of 0 makes it a result
    for seed, (a, b) in enumerate([(10.0, 7.0), (10.0, 7.0), (10.0, 7.0)]):
        write_report(tmp_path / "x" / f"seed{seed}" / "main.json", [["a", 5, a]])
        write_report(tmp_path / "x" / f"seed{seed}" / "ablation.json", [["a", 5, b]])
    rows = read_seed_reports(tmp_path / "x", {"main": "", "ablation": "abl: "})
    table = compare_rows(rows, [("a", "abl: a")], ["fd_video_stats"], "diff")
    assert table.rows[0][2] == "+3 (floor 0; a higher)"


def test_missing_reports_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\['main'\\] reports under"):
        read_seed_reports(tmp_path, {"main": ""})


def test_mutual_forcing_summary_reads_the_seed_script_layout(tmp_path):
    columns = ["sampler", "NFE/block", "fd_video_stats", "fd_audio_stats", "av_align", "event_f1_av",
               "event_timing_ms", "s per generated s"]
    # the teacher is measured once per seed, in whichever report: seed 0 with the default, seed 1 with the
    # low-noise ablation (the layout the seed script leaves after the default changed)
    teacher_in = {0: "quality_history_from_clip", 1: "quality_history_from_clip_low_noise"}
    for seed in range(2):
        for stem, shift in (("quality_history_from_clip", 0.0), ("quality_history_from_noise", 1.0),
                            ("quality_history_from_clip_low_noise", 2.0)):
            table = Table("q", columns)
            table.add("real clips (held out)", "-", 0.5, 16.0, 0.5, 0.8, 11.0, math.nan)
            table.add("few-step 4", 5, 100.0 + seed + shift, 500.0, 0.3, 0.3, 50.0, 0.1)
            table.add("multi-step 48", 49, 120.0 + seed, 600.0, 0.4, 0.3, 50.0, 0.3)
            if teacher_in[seed] == stem:
                table.add("teacher 48, cfg 1 (bidirectional)", 48, 90.0 + seed, 700.0, 0.3, 0.2, 60.0, 0.2)
            Report("q", [table]).save_json(tmp_path / f"seed{seed}" / f"{stem}.json")
    report = summarize(runs=tmp_path, json_out=tmp_path / "summary.json")
    names = [row[0] for row in report.tables[0].rows]
    low = "history from clip, s in {0.75, 0.5, 0.25}: "
    assert names == ["real clips (held out)", "few-step 4", "multi-step 48", "teacher 48, cfg 1 (bidirectional)",
                     "history from noise: few-step 4", "history from noise: multi-step 48", f"{low}few-step 4",
                     f"{low}multi-step 48"]
    teacher = next(row for row in report.tables[0].rows if row[0].startswith("teacher"))
    assert teacher[1] == 2  # one row over both seeds, unprefixed, from two different reports
    compared = {(row[0], row[1]): row for row in report.tables[1].rows}
    assert compared["few-step 4", "history from noise: few-step 4"][2].startswith("-1 (floor 0.71")
    assert (tmp_path / "summary.json").is_file()
