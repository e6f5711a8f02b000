"""The teacher through the real CLI: fit, TensorBoard logs, resume, generate; non-finite guard; safe checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from omniforcing.cli import main
from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.data.media import read_av
from omniforcing.models import build_preset
from omniforcing.training import TeacherLitModule
from omniforcing.training.base import NonFiniteLossError
from omniforcing.training.checkpoints import AtomicCheckpointIO
from omniforcing.training.cli import CONFIG_TAG, newest_last_checkpoint
from omniforcing.types import AVBatch, ClipSpec


def _last_checkpoint(root: Path) -> Path:
    found = sorted(root.rglob("last.ckpt"))
    assert found, f"no last.ckpt under {root}"
    return found[-1]


def _events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "audio": 0, "tensors": 0})
    events.Reload()
    return events


def test_tiny_fit_logs_to_tensorboard_resumes_from_last_then_generates_mp4(tmp_path, tiny_teacher_args):
    main(["fit", *tiny_teacher_args, "--trainer.callbacks+=omniforcing.callbacks.Throughput",
          "--trainer.callbacks.init_args.window=2"])
    ckpt = _last_checkpoint(tmp_path)
    checkpoint = torch.load(ckpt, weights_only=True)  # safe loading must work on our own checkpoints
    assert checkpoint["global_step"] == 4
    assert "ema_state" in checkpoint["callbacks"]["EMA"]
    assert (ckpt.parents[1] / "config.yaml").is_file()  # resolved config saved with the run
    events = _events(ckpt.parents[1])
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/loss_video", "train/loss_audio", "val/loss", "train/grad_norm",
                "train/grad_norm/video", "train/grad_norm/audio", "lr-AdamW", "train/samples_per_s",
                "train/tokens_per_s"):
        assert tag in scalars, tag
    assert {"samples/0/video", "samples/0/mel"} <= set(events.Tags()["images"])  # the GIF is an image summary
    assert "samples/0/audio" in events.Tags()["audio"]
    config = events.Tensors(f"{CONFIG_TAG}/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "TeacherLitModule" in config and "DualStreamTransformer" in config  # the resolved config, in TensorBoard

    # a second launch with --ckpt_path last continues the first run (new version folder, same step count)
    main(["fit", *tiny_teacher_args, "--trainer.max_steps=5", "--trainer.limit_val_batches=0", "--ckpt_path=last"])
    resumed = _last_checkpoint(tmp_path)
    assert resumed.parents[1] != ckpt.parents[1] and torch.load(resumed, weights_only=True)["global_step"] == 5
    assert min(e.step for e in _events(resumed.parents[1]).Scalars("train/loss")) >= 4  # continued, not restarted

    out = tmp_path / "clip.mp4"
    main(["generate", "--checkpoint", str(ckpt), "--prompt", "a red circle bounces", "--seconds", "2",
          "--out", str(out), "--steps", "2"])
    clip = read_av(out)
    assert clip.video.shape[0] == 49 and clip.fps == 24
    assert clip.audio is not None and clip.sample_rate == 16000
    assert abs(clip.audio.shape[1] / 16000 - (2 + 1 / 25)) < 0.01


def test_newest_last_checkpoint_searches_every_version(tmp_path):
    assert newest_last_checkpoint(tmp_path) is None
    for version, name in ((0, "last.ckpt"), (1, "last-v1.ckpt"), (2, "step0000004.ckpt")):
        folder = tmp_path / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (version, version))  # later versions written later
    assert newest_last_checkpoint(tmp_path) == tmp_path / "version_1" / "checkpoints" / "last-v1.ckpt"


def _module(on_nonfinite: str) -> TeacherLitModule:
    codec = AVCodec(PatchVideoCodec(), MelAudioCodec())
    network = build_preset("tiny", video_channels=1536, audio_channels=256)
    return TeacherLitModule(network, codec, clip=ClipSpec(seconds=1), on_nonfinite=on_nonfinite)


def _batch() -> AVBatch:
    clip = ClipSpec(seconds=1)
    return AVBatch(["x", "y"], video=torch.zeros(2, clip.num_frames, 3, 32, 32), audio=torch.zeros(2, 1, clip.num_samples))


def test_nonfinite_loss_stops_with_step_and_modality():
    module = _module("stop")
    module.codec.audio.encode = lambda audio: torch.full((2, 26, 256), float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 0: .*loss_audio"):
        module.training_step(_batch(), 0)


def test_nonfinite_loss_skip_drops_the_step_and_counts_it():
    module = _module("skip")
    module.codec.video.encode = lambda video: torch.full((2, 4, 1536, 4, 4), float("inf"))
    assert module.training_step(_batch(), 0) is None
    assert module.skipped_nonfinite_steps == 1


def test_network_and_codec_must_agree_on_latent_geometry():
    codec = AVCodec(PatchVideoCodec(), MelAudioCodec())
    with pytest.raises(ValueError, match="video_channels: network 16 vs codec 1536"):
        TeacherLitModule(build_preset("tiny", audio_channels=256), codec)


def test_atomic_checkpoint_io_leaves_no_partial_file(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)

    class Exploding:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "bad": Exploding()}, target)
    assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.ones(3))  # old file intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def test_checkpoint_loading_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("x")}, path)  # a non-tensor object needs unpickling
    with pytest.raises(Exception, match="(?i)weights_only|unsupported"):
        AtomicCheckpointIO().load_checkpoint(path)


@pytest.mark.slow
def test_overfitting_one_batch_drives_the_loss_down():
    torch.manual_seed(0)
    module = _module("stop")
    batch = _batch()
    batch.video = torch.rand_like(batch.video) * 2 - 1
    batch.audio = torch.randn_like(batch.audio) * 0.1
    module.objective.condition_dropout = 0.0
    optimizer = torch.optim.Adam(module.network.parameters(), lr=2e-3)
    x0 = module.latents(batch)
    losses = []
    for step in range(200):
        generator = torch.Generator().manual_seed(step % 4)  # a few fixed (t, noise) draws
        loss = module.objective.loss(module.network, x0, batch.captions, generator)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4


def _save_network(module: TeacherLitModule, path: Path) -> str:
    torch.save({"state_dict": {f"network.{k}": v for k, v in module.network.state_dict().items()}}, path)
    return str(path)


def _perturbed(modality: str, seed: int) -> TeacherLitModule:
    torch.manual_seed(seed)
    module = TeacherLitModule(build_preset("tiny", video_channels=1536, audio_channels=256),
                              AVCodec(PatchVideoCodec(), MelAudioCodec()), clip=ClipSpec(seconds=1), modality=modality)
    with torch.no_grad():
        for param in module.network.parameters():
            param.add_(0.01 * torch.randn_like(param))  # zero-initialised gates and heads become distinguishable
    return module


def test_unimodal_teacher_trains_only_its_stream():
    module = _perturbed("video", 0)
    trainable = {n for n, p in module.network.named_parameters() if p.requires_grad}
    assert trainable and all(not n.startswith("audio.") and ".cross_attn." not in n for n in trainable)
    assert any(n.startswith("video.") for n in trainable)
    optimiser = module.configure_optimizers()
    optimiser = optimiser["optimizer"] if isinstance(optimiser, dict) else optimiser
    assert sum(p.numel() for g in optimiser.param_groups for p in g["params"]) == sum(
        p.numel() for p in module.network.parameters() if p.requires_grad)


def test_joint_teacher_couples_two_unimodal_teachers(tmp_path):
    video, audio = _perturbed("video", 1), _perturbed("audio", 2)
    joint = TeacherLitModule(build_preset("tiny", video_channels=1536, audio_channels=256),
                             AVCodec(PatchVideoCodec(), MelAudioCodec()), clip=ClipSpec(seconds=1),
                             init_video_from=_save_network(video, tmp_path / "v.ckpt"),
                             init_audio_from=_save_network(audio, tmp_path / "a.ckpt"))
    # with the cross-modal gates zero, the coupled model is the two uni-modal teachers side by side
    net, captions = joint.network, ["a red circle bounces", "a blue square bounces"]
    v, a = torch.randn(2, 4, 1536, 4, 4), torch.randn(2, 26, 256)
    tv, ta = torch.rand(2, 4), torch.rand(2, 26)
    with torch.no_grad():
        joint_v, joint_a = net(v, a, tv, ta, net.encode_text(captions))
        alone_v, _ = video.network(v, None, tv, None, video.network.encode_text(captions))
        _, alone_a = audio.network(None, a, None, ta, audio.network.encode_text(captions))
    assert torch.allclose(joint_v, alone_v, atol=1e-5) and torch.allclose(joint_a, alone_a, atol=1e-5)
    assert alone_v.abs().mean() > 1e-3 and alone_a.abs().mean() > 1e-3  # perturbed heads: outputs are not zero
    assert all(p.requires_grad for p in joint.network.parameters())
    with pytest.raises(ValueError, match="both init_video_from and init_audio_from"):
        TeacherLitModule(build_preset("tiny", video_channels=1536, audio_channels=256),
                         AVCodec(PatchVideoCodec(), MelAudioCodec()), init_video_from=str(tmp_path / "v.ckpt"))
