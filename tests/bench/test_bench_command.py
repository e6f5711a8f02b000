"""``omniforcing bench`` keeps what it measured: the JSON is rewritten after every table, a table or a suite that
raises is recorded with its error while the others still run, SIGTERM stops a run within seconds, and user
errors in its flags are one line with exit code 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from omniforcing.bench import streaming
from omniforcing.bench.report import Report, Table
from omniforcing.cli import main
from omniforcing.commands import bench as bench_command

REPOSITORY = Path(__file__).resolve().parents[2]


def test_a_table_that_raises_is_recorded_and_the_other_tables_still_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    seen_before_latency = {}

    def failing_latency_table(*args, **kwargs):
        # the JSON already holds the table measured before this one, marked as a run still going on
        seen_before_latency.update(json.loads(out.read_text()))
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail on a second line")

    monkeypatch.setattr(streaming, "latency_table", failing_latency_table)
    with pytest.raises(SystemExit, match="2 table\\(s\\) not measured: streaming: Per-block latency"):
        main(["bench", "--suite", "streaming", "--quick", "true", "--out", str(out)])
    assert seen_before_latency["status"] == "running"
    assert [t["title"].split(" (")[0] for t in seen_before_latency["tables"]] == [
        "Student streaming vs bidirectional teacher"]

    report = json.loads(out.read_text())
    assert report["status"] == "complete"
    assert report["failures"][0] == {"table": "Per-block latency vs stream position",
                                     "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    titles = [t["title"].split(" (")[0] for t in report["tables"]]
    assert titles == ["Student streaming vs bidirectional teacher", "Per-block latency vs stream position",
                      "Overlap of generation and decoding", "Model FLOPs per generated second and utilisation",
                      "Student block time by dtype"]
    flops = report["tables"][3]  # it needs the failed table's block latency: recorded as failed too, with why
    assert flops["rows"] == [] and "block_latency_ms from the latency table" in flops["error"]
    assert report["tables"][2]["rows"] and report["tables"][4]["rows"]  # tables after the failures ran
    assert report["summary"]["speedup_vs_teacher"] > 0 and report["summary"]["overlap_speedup"] > 0
    assert "**not measured**: RuntimeError: CUDA out of memory" in capsys.readouterr().out


def _suite(name: str):
    def run(quick: bool = False, on_table=None) -> Report:
        report = Report(name, on_table=on_table)
        report.measure(f"{name} table", lambda: (Table(f"{name} table", ["x"], [[1.0]]), {"value": 1.0}))
        return report
    return run


def test_a_suite_whose_setup_raises_is_recorded_and_the_next_suite_runs(tmp_path, monkeypatch, capsys):
    def broken(quick: bool = False, on_table=None) -> Report:
        raise MemoryError("cannot allocate the models")

    runners = {"streaming": _suite("streaming"), "training": broken, "data": _suite("data")}
    monkeypatch.setattr(bench_command, "_runner", runners.get)
    with pytest.raises(SystemExit, match="training: suite training: MemoryError: cannot allocate the models"):
        main(["bench", "--suite", "all", "--out", str(tmp_path / "all.json")])
    printed = capsys.readouterr().out
    assert "### streaming table" in printed and "### data table" in printed
    report = json.loads((tmp_path / "all.json").read_text())
    assert report["summary"]["streaming"]["value"] == report["summary"]["data"]["value"] == 1.0
    assert report["failures"] == [{"table": "suite training", "error": "MemoryError: cannot allocate the models"}]


SIGTERM_SCRIPT = """
import pathlib, sys, torch
from omniforcing.bench import streaming
from omniforcing.cli import main

def endless_overlap_table(*args, **kwargs):  # a long table: the run is busy computing when SIGTERM comes
    pathlib.Path(sys.argv[2]).touch()
    a = torch.ones(64, 64)
    while True:
        a = torch.mm(a, a).clamp(-1, 1)

streaming.overlap_table = endless_overlap_table
main(["bench", "--suite", "streaming", "--quick", "true", "--out", sys.argv[1]])
"""


def _run_until(script: str, marker: Path, *args: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args, str(marker)], cwd=REPOSITORY,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the bench never reached the point to interrupt: {process.communicate()[1][-2000:]}")
        time.sleep(0.1)
    return process


def test_sigterm_ends_the_bench_within_seconds_and_keeps_the_measured_tables(tmp_path):
    out, marker = tmp_path / "bench.json", tmp_path / "started"
    process = _run_until(SIGTERM_SCRIPT, marker, str(out))
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=30)  # generous: "within seconds" on a loaded 2-core machine
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the bench was still running 30 s after SIGTERM")
    assert process.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    report = json.loads(out.read_text())
    assert report["status"] == "interrupted by SIGTERM"
    assert [t["title"].split(" (")[0] for t in report["tables"]] == ["Student streaming vs bidirectional teacher",
                                                                    "Per-block latency vs stream position"]


TRAINING_SIGTERM_SCRIPT = """
import pathlib, sys
from omniforcing.bench import training
from omniforcing.cli import main

def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # a long step inside trainer.fit
    pathlib.Path(sys.argv[2]).touch()
    while True:
        sum(range(1000))

training.StepTimer.on_train_batch_end = on_train_batch_end
main(["bench", "--suite", "training", "--quick", "true", "--out", sys.argv[1]])
"""


def test_sigterm_inside_lightning_training_stops_the_bench_instead_of_labelling_the_recipe(tmp_path):
    out, marker = tmp_path / "training.json", tmp_path / "started"
    process = _run_until(TRAINING_SIGTERM_SCRIPT, marker, str(out))
    process.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the training bench was still running 30 s after SIGTERM")
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr
    assert "does not parse" not in stdout + stderr and "### Teacher training throughput" not in stdout


def test_lightning_sigterm_exception_is_not_reported_as_a_bad_recipe(tmp_path, monkeypatch):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from omniforcing.bench import training

    def interrupted(*args, **kwargs):
        raise SIGTERMException

    monkeypatch.setattr(training, "export_teacher", lambda config, root: tmp_path)
    monkeypatch.setattr(training, "time_method", interrupted)
    with pytest.raises(SIGTERMException):
        training.methods_table(training.TrainingBenchConfig.make(quick=True), tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--video-grid", "16by24"], "--video-grid must be HxW"),
    (["--video-grid", "0x4"], "--video-grid must be HxW"),
    (["--preset", "huge"], "unknown --preset 'huge'"),
    (["--suite", "data", "--video-grid", "4x4"], "--video-grid does not apply to suite data"),
    (["--suite", "codec", "--dtype", "float32"], "--dtype does not apply to suite codec"),
])
def test_bad_flags_are_one_line_user_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *flags])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1


class _Stop(RuntimeError):
    pass


def test_preset_and_video_grid_flags_reach_the_streaming_and_model_suites(monkeypatch):
    from omniforcing.bench import model

    seen = {}

    def streaming_models(config, device, dtype):
        seen["streaming"] = (config.preset, config.video_grid, dtype)
        raise _Stop("models recorded")

    def model_preset(name, **overrides):
        seen["model"] = (name, overrides["video_grid"])
        raise _Stop("preset recorded")

    monkeypatch.setattr(streaming, "bench_models", streaming_models)
    monkeypatch.setattr(model, "build_preset", model_preset)
    for suite in ("streaming", "model"):
        with pytest.raises(SystemExit, match="_Stop"):
            main(["bench", "--suite", suite, "--quick", "true", "--preset", "base", "--video-grid", "16x24",
                  *(["--dtype", "float32"] if suite == "streaming" else [])])
    assert seen == {"streaming": ("base", (16, 24), torch.float32), "model": ("base", (16, 24))}


def test_a_method_that_fails_in_the_training_table_is_one_row_and_the_other_methods_run(tmp_path, monkeypatch):
    from omniforcing.bench import training

    def time_method(method, config, paths, root):
        if method.key == "dmd":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\ntrace")
        return training.MethodTiming([0.5, 0.5], 1024, 2048, 10, 4, 40)

    monkeypatch.setattr(training, "export_teacher", lambda config, root: tmp_path)
    monkeypatch.setattr(training, "write_ode_pairs", lambda teacher, config, root, device: tmp_path / "pairs")
    monkeypatch.setattr(training, "time_method", time_method)
    table, summary = training.methods_table(training.TrainingBenchConfig.make(quick=True), tmp_path)
    rows = {row[0].split(":")[0]: row for row in table.rows}
    assert rows["OmniForcing I"][1:3] == ["not available",
                                          "failed: RuntimeError: CUDA error: an illegal memory access was encountered"]
    assert summary["step_seconds_teacher"] == summary["step_seconds_mutual_forcing"] == 0.5
    assert "step_seconds_dmd" not in summary
