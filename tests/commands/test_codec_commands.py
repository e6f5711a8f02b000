"""``omniforcing data encode``, ``data codec-stats`` and ``codec export`` through the real command line entry point,
and a teacher trained on the encoded latent shards with ``-c recipes/data/latents.yaml``."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch

from omniforcing.cli import main
from omniforcing.codecs import CausalVideoAutoencoder, MelAudioCodec, PatchVideoCodec, load_codec
from omniforcing.data.datamodule import SyntheticDataModule
from omniforcing.data.latent_shards import iter_window_batches, plan_windows
from omniforcing.data.shards import resolve_shards
from omniforcing.data.synthetic import SceneSettings, write_synthetic_shards
from omniforcing.training.codec import CodecLitModule
from omniforcing.types import ClipSpec
from user_errors import user_error

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
TINY_VIDEO_AE = {"latent_channels": 4, "widths": (4, 8, 8), "group_width": 16}


@pytest.fixture(scope="module")
def media_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic 2-s clips (default scenes: 1-3 objects, room tone) in 2 shards."""
    out = tmp_path_factory.mktemp("media")
    write_synthetic_shards(out, 4, ClipSpec(seconds=2), seed=5, shard_size=2, settings=SceneSettings(), workers=0,
                           progress=False)
    return out


@pytest.fixture(scope="module")
def codec_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CodecLitModule]:
    """A codec-training ``last.ckpt`` of a tiny video autoencoder (2 steps, validated, so statistics fitted)."""
    root = tmp_path_factory.mktemp("codec_fit")
    module = CodecLitModule(CausalVideoAutoencoder(**TINY_VIDEO_AE), clip=ClipSpec(seconds=1))
    data = SyntheticDataModule(ClipSpec(seconds=1), train_clips=4, val_clips=2, batch_size=2)
    trainer = L.Trainer(default_root_dir=root, accelerator="cpu", max_steps=2, val_check_interval=2,
                        limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    return Path(trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path), module


def test_data_encode_with_a_recipe_and_train_a_teacher_on_the_latents(media_shards, tmp_path, capsys):
    out = tmp_path / "latents"
    main(["data", "encode", "--in", str(media_shards), "--codec", str(RECIPES / "latents/patch.yaml"), "--out", str(out),
          "--seconds", "1", "--shard-size", "4"])
    assert "encoded 8 windows of 1 s into 2 shards" in capsys.readouterr().out
    main(["data", "inspect", str(out)])
    assert "samples: 8 (0 media, 8 latent)" in capsys.readouterr().out
    run = tmp_path / "runs"
    main(["fit", *recipe_args("base.yaml", "data/latents.yaml", "teacher/joint.yaml", "latents/patch.yaml",
                              "model/tiny.yaml"),
          *tiny_teacher_overrides(out, run)])
    assert list(run.glob("teacher_joint/version_0/checkpoints/last.ckpt"))


def test_teacher_refuses_latents_of_another_codec(media_shards, tmp_path, capsys):
    out = tmp_path / "latents"
    main(["data", "encode", "--in", str(media_shards), "--codec", str(RECIPES / "latents/patch.yaml"), "--out", str(out),
          "--seconds", "1"])
    message = user_error(capsys, ["fit", *recipe_args("base.yaml", "data/latents.yaml", "teacher/joint.yaml",
                                                      "latents/learned.yaml", "model/tiny.yaml"),
                                  *tiny_teacher_overrides(out, tmp_path / "runs")])
    assert re.search(r"another codec.*video\.class_path: shards .*PatchVideoCodec", message)


def recipe_args(*files: str) -> list[str]:
    return [arg for name in files for arg in ("-c", str(RECIPES / name))]


def tiny_teacher_overrides(latents: Path, run: Path) -> list[str]:
    """A 2-step CPU teacher run on the latent shards (recipes/debug/tiny_cpu.yaml is for synthetic data)."""
    return [f"--data.init_args.train_shards={latents}", f"--data.init_args.val_shards={latents}",
            "--data.init_args.clip.seconds=1", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
            "--data.init_args.epoch_length=2", "--model.init_args.sample_steps=2", "--trainer.accelerator=cpu",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
            f"--trainer.logger.init_args.save_dir={run}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]


def test_codec_stats_normalise_latents_to_zero_mean_and_unit_std(media_shards, tmp_path, capsys):
    out = tmp_path / "stats" / "patch.safetensors"
    main(["data", "codec-stats", str(media_shards), "--codec", str(RECIPES / "latents/patch.yaml"), "--out", str(out),
          "--seconds", "1"])
    assert "AVCodec" not in capsys.readouterr().out.split("saved")[0]  # one line per part: video, audio
    codecs = {"video": PatchVideoCodec(checkpoint=str(out.with_name("patch_video.safetensors"))),
              "audio": MelAudioCodec(checkpoint=str(out.with_name("patch_audio.safetensors")))}
    assert load_codec(out).video.normalizer.is_fitted  # the AV file itself, usable as --codec
    spec = ClipSpec(seconds=1)
    windows, _ = plan_windows(resolve_shards(str(media_shards)), 1, 1, spec.fps, spec.sample_rate, spec.frame_size)
    batches = list(iter_window_batches(windows, spec, batch_size=8))
    for name, codec in codecs.items():
        latents = torch.cat([codec.encode(video if name == "video" else audio) for _, _, video, audio in batches])
        vectors = latents.movedim(2, -1).flatten(0, -2).double()
        varying = codec.normalizer.std > 1e-3  # constant channels (never-lit corner pixels) stay constant
        assert varying.float().mean() > 0.5
        assert vectors.mean(0).abs().max() < 1e-4
        torch.testing.assert_close(vectors.std(0, unbiased=False)[varying], torch.ones_like(vectors[0])[varying],
                                   rtol=0, atol=1e-4)


def test_codec_export_round_trip(codec_checkpoint, tmp_path, capsys):
    checkpoint, module = codec_checkpoint
    out = tmp_path / "video_ae.safetensors"
    main(["codec", "export", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert "exported CausalVideoAutoencoder" in capsys.readouterr().out
    exported = load_codec(out)
    for key, value in module.codec.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[key], value, rtol=0, atol=0)
    assert exported.normalizer.is_fitted
    by_class = CausalVideoAutoencoder(**TINY_VIDEO_AE, checkpoint=str(out))
    video = torch.rand(1, 9, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(by_class.eval().encode(video), module.codec.eval().encode(video))
    half = tmp_path / "video_ae_bf16.safetensors"
    main(["codec", "export", "--checkpoint", str(checkpoint), "--out", str(half), "--dtype", "bfloat16"])
    assert half.stat().st_size < 0.6 * out.stat().st_size
    torch.testing.assert_close(load_codec(half).encode(video), exported.encode(video), rtol=0.05, atol=0.05)


def test_bad_codec_arguments_give_specific_errors(media_shards, codec_checkpoint, tmp_path, capsys):
    assert "missing.safetensors: no such file" in user_error(capsys, [
        "data", "encode", "--in", str(media_shards), "--codec", str(tmp_path / "missing.safetensors"),
        "--out", str(tmp_path / "x")])
    assert "missing.yaml: no such file" in user_error(capsys, [
        "data", "encode", "--in", str(media_shards), "--codec", str(tmp_path / "missing.yaml"),
        "--out", str(tmp_path / "x")])
    assert "is a PatchVideoCodec; encoding needs an AVCodec" in user_error(capsys, [
        "data", "encode", "--in", str(media_shards), "--codec", "omniforcing.codecs.PatchVideoCodec",
        "--out", str(tmp_path / "x")])
    assert "no shard files match" in user_error(capsys, [
        "data", "encode", "--in", str(tmp_path / "nothing"), "--codec", str(RECIPES / "latents/patch.yaml"),
        "--out", str(tmp_path / "x")])
    assert "holds no codec config" in user_error(capsys, [
        "data", "codec-stats", str(media_shards), "--codec", str(RECIPES / "model/tiny.yaml"),
        "--out", str(tmp_path / "s.safetensors")])
    teacher_like = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": {"network.w": torch.zeros(1)}}, teacher_like)
    assert "holds no 'codec_config'" in user_error(capsys, [
        "codec", "export", "--checkpoint", str(teacher_like), "--out", str(tmp_path / "t.safetensors")])
    assert "ending in .safetensors" in user_error(capsys, [
        "codec", "export", "--checkpoint", str(codec_checkpoint[0]), "--out", str(tmp_path / "t.pt")])
    unreadable = tmp_path / "unreadable.ckpt"
    unreadable.write_bytes(b"not a checkpoint")
    assert "unreadable.ckpt is not a torch weights file" in user_error(capsys, [
        "codec", "export", "--checkpoint", str(unreadable), "--out", str(tmp_path / "t.safetensors")])
