"""``omniforcing bench --suite training`` builds every available method from its recipe and times a step, and
measures the teacher's training throughput per model preset."""

from __future__ import annotations

import json
import math

import pytest

from omniforcing.bench.training import TrainingBenchConfig, presets_table
from omniforcing.cli import main
from omniforcing.types import AUDIO_LATENT_RATE, ClipSpec


def test_presets_table_quick_has_a_tiny_teacher_row_with_latent_token_counts(tmp_path):
    config = TrainingBenchConfig.make(quick=True)
    table, summary = presets_table(config, quick=True, root=tmp_path)
    assert [row[0] for row in table.rows] == ["tiny"]
    row = dict(zip(table.columns, table.rows[0]))
    assert row["parameters"] > 0 and row["measured steps"] == config.steps
    for column in ("mean step (s)", "samples/s", "tokens/s"):
        assert math.isfinite(row[column]) and row[column] > 0, column
    assert row["held after warm-up (MiB)"] >= 0 and row["step peak above that (MiB)"] >= 0
    # learned latents: 3 video latents per second + the lead frame on a (size / 8)^2 grid, and one audio latent
    # per 40 ms + the lead latent; channels must not be counted as tokens
    clip = ClipSpec(seconds=config.clip_seconds)
    video = (1 + 3 * clip.seconds) * (clip.size // 8) ** 2
    assert row["tokens/sample"] == video + 1 + AUDIO_LATENT_RATE * clip.seconds
    assert row["tokens/s"] == pytest.approx(row["samples/s"] * row["tokens/sample"])
    assert summary["teacher_tokens_per_s_tiny"] == row["tokens/s"]
    assert summary["teacher_samples_per_s_tiny"] == row["samples/s"]


def test_presets_table_reports_a_missing_codec_as_not_available(tmp_path, monkeypatch):
    # neither the working directory nor the repository root holds the codec weights the recipe names
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("omniforcing.codecs.checkpoint.REPOSITORY_ROOT", tmp_path)
    table, summary = presets_table(TrainingBenchConfig.make(quick=True), quick=True, root=tmp_path)
    assert table.rows[0][:2] == ["tiny", "not available"] and "codec" in table.rows[0][2]
    assert not summary


@pytest.mark.slow
def test_training_bench_quick_times_every_method(tmp_path, capsys):
    main(["bench", "--suite", "training", "--quick", "true", "--out", str(tmp_path / "training.json")])
    printed = capsys.readouterr().out
    assert "### Training step time and memory per method" in printed and "not available" not in printed
    assert "### Teacher training throughput per model preset" in printed
    summary = json.loads((tmp_path / "training.json").read_text())["summary"]
    for key in ("teacher", "dmd", "ode_regression", "self_forcing", "mutual_forcing"):
        assert summary[f"step_seconds_{key}"] > 0 and summary[f"held_mib_{key}"] >= 0
    assert summary["synthetic_loader_clips_per_s_0_workers"] > 0 and summary["teacher_clips_per_s"] > 0
    assert summary["teacher_samples_per_s_tiny"] > 0 and summary["teacher_tokens_per_s_tiny"] > 0


def test_a_compiled_run_adds_the_compile_callback_and_warms_up_every_kind_of_step(tmp_path):
    from omniforcing.bench.training import COMPILED_WARMUP, METHODS, build
    from omniforcing.callbacks import CompileBackbones

    eager = TrainingBenchConfig.make(quick=True)
    config = eager.compiled()
    assert (config.compile, config.warmup, config.label, eager.label) == (True, COMPILED_WARMUP, "compiled", "eager")
    assert config.steps == eager.steps and config.preset == eager.preset
    _, _, trainer, _ = build(METHODS[0], config, {}, tmp_path)
    assert [type(c) for c in trainer.callbacks if isinstance(c, CompileBackbones)] == [CompileBackbones]
    _, _, trainer, _ = build(METHODS[0], eager, {}, tmp_path)
    assert not any(isinstance(c, CompileBackbones) for c in trainer.callbacks)
