"""MutualForcingLitModule: one parameter set, rank-shared history length, coupling, recipes, the tiny pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.inference.dual_mode import DualModes, concat_blocks, stream_blocks
from omniforcing.inference.stream_settings import settings_from_config
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.methods.mutual_forcing import MutualForcing
from omniforcing.models.transformer import DualStreamTransformer
from omniforcing.sampling.dual_mode import HistoryFromNoise, HistoryFromRealClip
from omniforcing.training.base import AVLitModule
from omniforcing.training.cli import OmniCLI
from omniforcing.training.mutual_forcing import MutualForcingLitModule
from omniforcing.types import AVBatch

from training_recipes import recipe_args

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TINY = dict(video_channels=1536, video_grid=(4, 4), audio_channels=256, video_width=32, audio_width=16, depth=2,
            video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=24)
CAPTIONS = ["a red circle bounces", "a blue square thuds"]


def make_network(seed: int = 0, perturb: bool = False) -> DualStreamTransformer:
    torch.manual_seed(seed)
    network = DualStreamTransformer(**TINY, causal=True, step_size_conditioning=True)
    if perturb:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in network.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    return network


def make_module(objective: MutualForcing | None = None, **kwargs) -> MutualForcingLitModule:
    network = kwargs.pop("network", None) or make_network(perturb=True)
    return MutualForcingLitModule(network, AVCodec(PatchVideoCodec(), MelAudioCodec()), objective, **kwargs)


def latent_batch(seconds: int = 2, seed: int = 0) -> AVBatch:
    gen = torch.Generator().manual_seed(seed)
    return AVBatch(list(CAPTIONS), video_latents=torch.randn(2, 1 + 3 * seconds, 1536, 4, 4, generator=gen),
                   audio_latents=torch.randn(2, 1 + 25 * seconds, 256, generator=gen))


def attach(module: L.LightningModule, step: int, rank: int) -> None:
    """Stand in for the trainer attributes the module's seeded generators read."""
    module.trainer = SimpleNamespace(global_step=step, global_rank=rank)


def save_network(network: torch.nn.Module, path: Path) -> str:
    torch.save({"state_dict": {f"network.{k}": v for k, v in network.state_dict().items()}}, path)
    return str(path)


def test_one_parameter_set_for_both_modes():
    module = make_module()
    assert {key.split(".")[0] for key in module.state_dict()} == {"network", "codec"}
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.network.parameters()}
    assert module.modes == DualModes(few_step_size=0.25, multi_step_size=0.0)
    dmd = make_module(MutualForcing(distillation="dmd"))
    optimised = {id(p) for group in dmd.configure_optimizers().param_groups for p in group["params"]}
    assert optimised == {id(p) for p in dmd.network.parameters()} | {id(p) for p in dmd.critic.parameters()}
    assert not {id(p) for p in dmd.network.parameters()} & {id(p) for p in dmd.critic.parameters()}


@pytest.mark.parametrize("modality", ["joint", "video", "audio"])
def test_every_trainable_parameter_gets_a_gradient(modality):
    # DDP stops on trainable parameters without gradient; uni-modal runs freeze the other stream instead
    module = make_module(modality=modality)
    attach(module, step=0, rank=0)
    step = module.compute_step(latent_batch(), module.step_generator(), module.step_generator(True, 1))
    step.losses["loss"].backward()
    trainable = dict((n, p) for n, p in module.network.named_parameters() if p.requires_grad)
    assert [n for n, p in trainable.items() if p.grad is None] == []
    if modality != "joint":
        other = "audio" if modality == "video" else "video"
        assert not any(n.startswith(f"{other}.") or ".cross_attn." in n for n in trainable)


def test_history_length_is_shared_across_ranks_and_varies_across_steps():
    modules = [make_module(MutualForcing(teacher_steps=2)) for _ in range(2)]
    batch = latent_batch()
    blocks, losses = [], []
    for step in range(5):
        per_rank = []
        for rank, module in enumerate(modules):
            attach(module, step, rank)
            result = module.compute_step(batch, module.step_generator(),
                                         module.step_generator(shared_across_ranks=True, salt=1))
            per_rank.append((result.history_blocks, float(result.losses["loss_fm"].detach())))
        assert per_rank[0][0] == per_rank[1][0]
        blocks.append(per_rank[0][0])
        losses.append(per_rank[0][1] != per_rank[1][1])  # per-rank noise differs
    assert len(set(blocks)) > 1 and all(losses)


def test_coupling_two_unimodal_checkpoints_reproduces_their_outputs(tmp_path):
    video_model, audio_model = make_network(seed=1, perturb=True), make_network(seed=2, perturb=True)
    joint = make_module(network=make_network(seed=3), init_video_from=save_network(video_model, tmp_path / "v.ckpt"),
                        init_audio_from=save_network(audio_model, tmp_path / "a.ckpt")).network
    batch = latent_batch(seconds=1)
    video, audio = batch.video_latents, batch.audio_latents
    t_video, t_audio = torch.rand(2, video.shape[1]), torch.rand(2, audio.shape[1])
    step = torch.full((2,), 0.25)
    with torch.no_grad():
        joint_video, joint_audio = joint(video, audio, t_video, t_audio, joint.encode_text(CAPTIONS), step_size=step)
        alone_video, _ = video_model(video, None, t_video, None, video_model.encode_text(CAPTIONS), step_size=step)
        _, alone_audio = audio_model(None, audio, None, t_audio, audio_model.encode_text(CAPTIONS), step_size=step)
    assert torch.allclose(joint_video, alone_video, atol=1e-6) and torch.allclose(joint_audio, alone_audio, atol=1e-6)
    assert alone_video.abs().mean() > 1e-3 and alone_audio.abs().mean() > 1e-3


def test_invalid_configurations_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="step_size_conditioning"):
        MutualForcingLitModule(DualStreamTransformer(**TINY, causal=True), AVCodec(PatchVideoCodec(), MelAudioCodec()))
    with pytest.raises(ValueError, match="both init_video_from and init_audio_from"):
        make_module(init_video_from=save_network(make_network(), tmp_path / "v.ckpt"))


@pytest.mark.parametrize("modality", ["joint", "video", "audio"])
def test_generate_clips_streams_the_configured_modalities(modality):
    module = make_module(modality=modality, sample_steps=2)
    for mode in ("few_step", "multi_step"):
        module.sample_mode = mode
        clips = module.generate_clips(CAPTIONS, seconds=1, seed=0)
        assert (clips.video is None) == (modality == "audio") and (clips.audio is None) == (modality == "video")
        if clips.video is not None:
            assert clips.video.shape == (2, 25, 32, 32, 3) and clips.video.dtype == torch.uint8
        if clips.audio is not None:
            assert clips.audio.shape == (2, 16640)


@pytest.mark.parametrize("context_time", [0.0, 0.1])
def test_few_step_stream_is_the_streaming_engines_stream(context_time):
    """Mutual Forcing streams through the engine of every causal student: from what the module records, the
    engine picks the few-step times and step size, and gives the same latents as the module's own sampler."""
    module = make_module(context_time=context_time)
    config = {"method_args": module.generation_settings()}
    settings = settings_from_config(config)
    assert (settings.step_size, settings.video_times, settings.context_time) == (0.25, (1.0, 0.75, 0.5, 0.25),
                                                                                 context_time)
    engine = StreamingGenerator(module.network, module.codec, settings)
    want = engine.generate_latents(CAPTIONS[0], seconds=2, seed=3)
    with torch.no_grad():
        got = concat_blocks(list(stream_blocks(module.network, CAPTIONS[:1], 3, module.modes,
                                               generator=torch.Generator().manual_seed(3))))
    torch.testing.assert_close(got.video, want.video, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.audio, want.audio, atol=1e-5, rtol=0)
    other_mode = StreamingGenerator(module.network, module.codec, replace(settings, step_size=0.0))
    assert (other_mode.generate_latents(CAPTIONS[0], seconds=2, seed=3).video - want.video).abs().max() > 1e-4


def _recipe_cli(tmp_path: Path, stage: str, *extra: str, ablation: str | None = None) -> OmniCLI:
    ablations = [] if ablation is None else [f"mutual_forcing/ablations/{ablation}.yaml"]
    args = [*recipe_args(["base.yaml", "data/synthetic.yaml", f"mutual_forcing/{stage}.yaml", *ablations,
                          "latents/patch.yaml", "model/tiny.yaml", "debug/tiny_cpu.yaml"]),
            f"--trainer.logger.init_args.save_dir={tmp_path}", *extra]
    return OmniCLI(AVLitModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
                   run=False, save_config_kwargs={"overwrite": True})


def test_every_recipe_parses_and_trains_a_step(tmp_path):
    paths = {}
    for stage, modality in (("video_only", "video"), ("audio_only", "audio"), ("joint", "joint")):
        extra = [f"--model.init_args.init_{m}_from={paths[m]}" for m in ("video", "audio")] if stage == "joint" else []
        module = _recipe_cli(tmp_path, stage, *extra).model
        assert isinstance(module, MutualForcingLitModule) and module.modality == modality
        assert module.network.causal and module.network.step_size_conditioning
        assert type(module.objective.history) is HistoryFromRealClip  # the default: history from the real clip
        attach(module, step=0, rank=0)
        result = module.compute_step(latent_batch(seconds=1), module.step_generator(), module.step_generator(True, 1))
        result.losses["loss"].backward()
        assert torch.isfinite(result.losses["loss"])
        if stage != "joint":
            paths[modality] = save_network(module.network, tmp_path / f"{stage}.ckpt")


def test_history_from_noise_ablation_parses_and_trains_a_step(tmp_path):
    one_block = "--model.init_args.objective.init_args.min_history_blocks=1"
    module = _recipe_cli(tmp_path, "video_only", one_block, ablation="history_from_noise").model
    assert type(module.objective.history) is HistoryFromNoise
    assert module.objective.distill_times == MutualForcing(
        distill_times=[1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]).distill_times  # objective.yaml kept
    attach(module, step=0, rank=0)
    batch = latent_batch(seconds=1)
    result = module.compute_step(batch, module.step_generator(), module.step_generator(True, 1))
    result.losses["loss"].backward()
    assert torch.isfinite(result.losses["loss"])
    default = _recipe_cli(tmp_path, "video_only", one_block).model
    default.network.load_state_dict(module.network.state_dict())
    attach(default, step=0, rank=0)
    same_draws = default.compute_step(batch, default.step_generator(), default.step_generator(True, 1))
    # same weights and seeds, one history block each; the two sources write different histories
    assert result.history_blocks == same_draws.history_blocks == 1
    assert not torch.equal(same_draws.history[0].video, result.history[0].video)


def test_low_noise_ablation_recipe_sets_the_old_start_times_and_trains_a_step(tmp_path):
    one_block = "--model.init_args.objective.init_args.min_history_blocks=1"
    module = _recipe_cli(tmp_path, "video_only", one_block, ablation="history_from_clip_low_noise").model
    assert type(module.objective.history) is HistoryFromRealClip
    assert module.objective.history.start_times == (0.75, 0.5, 0.25)
    assert _recipe_cli(tmp_path, "video_only").model.objective.history.start_times is None  # the grid's first two
    attach(module, step=0, rank=0)
    result = module.compute_step(latent_batch(seconds=1), module.step_generator(), module.step_generator(True, 1))
    result.losses["loss"].backward()
    assert torch.isfinite(result.losses["loss"]) and result.history_blocks == 1


class HistoryRecorder(L.Callback):
    """Records the number of history blocks of every step on this rank (used by the 2-process test)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.blocks: list[int] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self.blocks.append(pl_module.last_history_blocks)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"blocks": self.blocks, "world_size": trainer.world_size, "pid": os.getpid()}))


@pytest.mark.slow
def test_two_process_ddp_draws_the_same_history_lengths(tmp_path):
    out = tmp_path / "history"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "omniforcing", "fit",
               *recipe_args(["base.yaml", "data/synthetic.yaml", "mutual_forcing/video_only.yaml",
                             "latents/patch.yaml", "model/tiny.yaml", "debug/tiny_cpu.yaml"]),
               "--data.init_args.clip.seconds=3", "--trainer.max_steps=8", "--trainer.limit_val_batches=0",
               "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
               "--model.init_args.objective.init_args.teacher_steps=2", "--trainer.enable_progress_bar=false",
               f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
               "--trainer.callbacks+=test_mutual_forcing_module.HistoryRecorder",
               f"--trainer.callbacks.init_args.out_dir={out}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks) and ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[0]["blocks"] == ranks[1]["blocks"] and len(ranks[0]["blocks"]) == 8
    assert len(set(ranks[0]["blocks"])) > 1


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end(tmp_path):
    from omniforcing.pipelines.mutual_forcing import run_pipeline

    summary = run_pipeline(out=tmp_path / "pipeline", steps=2, seconds=1, stream_seconds=2)
    for stage in ("video_only", "audio_only", "joint"):
        assert Path(summary["checkpoints"][stage]).is_file()
    assert Path(summary["exported"], "network.safetensors").is_file()
    assert Path(summary["clip"]).stat().st_size > 1000 and summary["blocks"] == 3
