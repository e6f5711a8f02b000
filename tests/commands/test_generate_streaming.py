"""``omniforcing generate`` streams causal students to a progressive mp4 and to a raw pipe."""

from __future__ import annotations

import re
import io
import sys
from pathlib import Path

import pytest
import torch

from omniforcing.cli import main
from omniforcing.commands.generate import reference_names, resolve_checkpoint
from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.data.media import read_av
from omniforcing.inference.export import save_exported
from omniforcing.inference.raw_stream import read_raw_stream
from omniforcing.models.transformer import DualStreamTransformer
from user_errors import user_error

NETWORK = dict(video_channels=384, video_grid=[2, 2], audio_channels=32, video_width=32, audio_width=16, depth=1,
               video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=24,
               num_audio_sinks=2, causal=True)
VIDEO = {"size": 8, "patch_size": 4}
AUDIO = {"n_mels": 8, "griffin_lim_iters": 2, "nnls_iters": 2}


def exported_student(folder: Path, causal: bool = True, **method_args) -> Path:
    """An exported tiny causal student, or bidirectional teacher (weights perturbed: a fresh model outputs zeros)."""
    torch.manual_seed(0)
    network = DualStreamTransformer(**{**NETWORK, "causal": causal})
    with torch.no_grad():
        for param in network.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    codec = AVCodec(PatchVideoCodec(**VIDEO), MelAudioCodec(**AUDIO))
    config = {"network": {"class_path": "omniforcing.models.DualStreamTransformer",
                          "init_args": {**NETWORK, "causal": causal}},
              "codec": {"class_path": "omniforcing.codecs.AVCodec", "init_args": {
                  "video": {"class_path": "omniforcing.codecs.PatchVideoCodec", "init_args": VIDEO},
                  "audio": {"class_path": "omniforcing.codecs.MelAudioCodec", "init_args": AUDIO}}},
              "method_args": {"times": [1.0, 0.5], "modality": "joint", **method_args}}
    return save_exported(folder, network, codec, config)


def test_generate_streams_a_causal_student_to_mp4(tmp_path, capsys):
    student = exported_student(tmp_path / "student")
    out = tmp_path / "clip.mp4"
    main(["generate", "--checkpoint", str(student), "--prompt", "a ball", "--seconds", "2", "--out", str(out),
          "--window", "2", "--audio-steps", "1", "--device", "cpu", "--threads", "1"])
    log = capsys.readouterr().out
    assert "video steps [1.0, 0.5], audio steps [1.0]" in log
    assert sum(line.startswith("block ") for line in log.splitlines()) == 3
    assert "time to first block" in log and "real-time factor" in log
    clip = read_av(out)
    assert clip.video.shape == (49, 8, 8, 3) and 640 + 32000 <= clip.audio.shape[1] <= 640 + 32000 + 1023


def test_generate_passes_the_compile_switch_to_the_streaming_engine(tmp_path, monkeypatch, capsys):
    import omniforcing.commands.generate as command

    seen = []

    class Recorder(command.StreamingGenerator):
        def __init__(self, network, codec, settings=None):
            seen.append(settings.compile)
            super().__init__(network, codec, settings)

    monkeypatch.setattr(command, "StreamingGenerator", Recorder)
    student = exported_student(tmp_path / "student")
    for flags, want in (([], None), (["--compile", "false"], False)):
        main(["generate", "--checkpoint", str(student), "--prompt", "a ball", "--seconds", "1",
              "--out", str(tmp_path / "clip.mp4"), "--device", "cpu", "--threads", "1", *flags])
        assert seen[-1] is want
    assert "block " in capsys.readouterr().out


def test_generate_compiles_a_bidirectional_model_only_when_asked_on_the_cpu(tmp_path, monkeypatch, capsys):
    """The teacher's whole-clip sampler takes the same switch (issue 12.3: a fair student/teacher ratio)."""
    from omniforcing.models.transformer import DualStreamTransformer

    calls = []
    monkeypatch.setattr(DualStreamTransformer, "compile_core",
                        lambda self, enabled=True, mode=None, backend="inductor": calls.append((enabled, mode)))
    teacher = exported_student(tmp_path / "teacher", causal=False, sample_steps=2)
    for flags, want in (([], []), (["--compile", "true"], [(True, None)])):
        calls.clear()
        main(["generate", "--checkpoint", str(teacher), "--prompt", "a ball", "--seconds", "1",
              "--out", str(tmp_path / "clip.mp4"), "--device", "cpu", "--threads", "1", *flags])
        assert calls == want
    assert "whole clip at once" in capsys.readouterr().out


def test_generate_writes_raw_blocks_to_stdout(tmp_path, monkeypatch, capsys):
    student = exported_student(tmp_path / "student")
    pipe = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(pipe))
    main(["generate", "--checkpoint", str(student), "--prompt", "a ball", "--seconds", "1", "--raw", "-",
          "--raw-audio", "s16", "--device", "cpu"])
    header, blocks = read_raw_stream(io.BytesIO(pipe.getvalue()))
    blocks = list(blocks)
    assert (header.fps, header.height, header.sample_rate, header.audio_format) == (24, 8, 16000, "s16")
    assert [(b.index, b.video.shape[0], b.audio.shape[0]) for b in blocks] == [(0, 1, 640), (1, 24, 16000)]
    assert "time to first block" in capsys.readouterr().err  # progress goes to stderr, stdout carries the blocks


def test_generate_explains_missing_outputs_and_step_size(tmp_path, capsys):
    student = exported_student(tmp_path / "student")
    assert "--out" in user_error(capsys, ["generate", "--checkpoint", str(student), "--prompt", "a", "--seconds", "1"])
    with pytest.raises(ValueError, match="no step-size conditioning"):
        main(["generate", "--checkpoint", str(student), "--prompt", "a", "--seconds", "1", "--out",
              str(tmp_path / "x.mp4"), "--step-size", "0.25", "--device", "cpu"])


def test_generate_finds_reference_models_by_name(tmp_path, monkeypatch, capsys):
    root = tmp_path / "reference"
    exported_student(root / "student")
    teacher = exported_student(root / "teacher", causal=False, sample_steps=2)
    (root / "codec").mkdir()  # a folder that is not an exported model is not offered as a name
    monkeypatch.setenv("OMNIFORCING_REFERENCE_DIR", str(root))
    assert resolve_checkpoint("student") == root / "student" and reference_names() == ["student", "teacher"]
    assert resolve_checkpoint(str(teacher)) == teacher  # a path wins over the name lookup
    main(["generate", "--checkpoint", "student", "--prompt", "a ball", "--seconds", "1", "--out",
          str(tmp_path / "student.mp4"), "--device", "cpu", "--dtype", "bfloat16"])
    assert "bfloat16 on cpu" in capsys.readouterr().out and read_av(tmp_path / "student.mp4").video.shape[0] == 25
    main(["generate", "--checkpoint", "teacher", "--prompt", "a ball", "--seconds", "1", "--out",
          str(tmp_path / "teacher.mp4"), "--device", "cpu"])
    assert "whole clip at once" in capsys.readouterr().out and read_av(tmp_path / "teacher.mp4").video.shape[0] == 25
    message = user_error(capsys, ["generate", "--checkpoint", "studnet", "--prompt", "a", "--seconds", "1", "--out",
                                  str(tmp_path / "x")])
    assert re.search(r"'studnet'.*available: student, teacher\)", message)
    monkeypatch.setenv("OMNIFORCING_REFERENCE_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="available: none yet"):
        resolve_checkpoint("student")


@pytest.mark.slow
def test_generate_streams_a_causal_model_trained_by_fit(tmp_path, capsys):
    main(["fit", "-c", "recipes/base.yaml", "-c", "recipes/data/synthetic.yaml", "-c", "recipes/teacher/joint.yaml",
          "-c", "recipes/latents/patch.yaml", "-c", "recipes/model/tiny.yaml", "-c", "recipes/debug/tiny_cpu.yaml",
          "--model.init_args.network.init_args.causal=true", "--trainer.max_steps=2",
          f"--trainer.logger.init_args.save_dir={tmp_path}"])
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    out = tmp_path / "stream.mp4"
    main(["generate", "--checkpoint", str(checkpoint), "--prompt", "a red ball bounces", "--seconds", "2",
          "--out", str(out), "--window", "2", "--device", "cpu", "--threads", "1"])
    assert "real-time factor" in capsys.readouterr().out
    clip = read_av(out)
    assert clip.video.shape[0] == 49 and clip.audio.shape[1] >= 640 + 32000
