"""OmniForcing stage modules: TTUR schedule, teacher/critic handling, checkpoints, streaming samples, DDP, recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from omniforcing.callbacks import EMA, PeriodicEvaluation, SampleLogger
from omniforcing.cli import main
from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.data.datamodule import SyntheticDataModule
from omniforcing.data.synthetic import SceneSettings
from omniforcing.inference.export import save_exported
from omniforcing.models.transformer import DualStreamTransformer
from omniforcing.training import DMDLitModule, ODEPairDataModule, ODERegressionLitModule, SelfForcingLitModule
from omniforcing.types import ClipSpec

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NETWORK = dict(video_channels=384, video_grid=[4, 4], audio_channels=64, video_width=16, audio_width=16, depth=1,
               video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=16)
CODEC_ARGS = dict(video=dict(size=16, patch_size=4), audio=dict(n_mels=16, griffin_lim_iters=2, nnls_iters=2))
CLIP = ClipSpec(seconds=1, size=16)


def tiny_codec(n_mels: int = 16) -> AVCodec:
    return AVCodec(PatchVideoCodec(**CODEC_ARGS["video"]), MelAudioCodec(**{**CODEC_ARGS["audio"], "n_mels": n_mels}))


def export_teacher(folder: Path, network_args: dict, codec: AVCodec, codec_tree: dict) -> Path:
    """Save a perturbed bidirectional teacher as an exported folder (what ``teacher_from`` accepts)."""
    torch.manual_seed(0)
    network = DualStreamTransformer(**network_args)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # a fresh model outputs exactly 0: make the scores differ
    config = {"network": {"class_path": "omniforcing.models.DualStreamTransformer", "init_args": network_args},
              "codec": codec_tree, "method_args": {"video_cfg": 2.0, "audio_cfg": 3.0}}
    return save_exported(folder, network, codec, config)


def export_tiny_teacher(tmp_path: Path) -> Path:
    """The tiny bidirectional teacher the stages distil (the ``teacher`` fixture of conftest.py)."""
    tree = {"class_path": "omniforcing.codecs.AVCodec", "init_args": {
        "video": {"class_path": "omniforcing.codecs.PatchVideoCodec", "init_args": CODEC_ARGS["video"]},
        "audio": {"class_path": "omniforcing.codecs.MelAudioCodec", "init_args": CODEC_ARGS["audio"]}}}
    return export_teacher(tmp_path / "teacher", NETWORK, tiny_codec(), tree)


class GeneratorSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        return super().step(closure)


class CriticSGD(GeneratorSGD):
    steps = 0


def captions_only(batches: int) -> SyntheticDataModule:
    return SyntheticDataModule(CLIP, train_clips=2 * batches, val_clips=2, batch_size=2,
                               scene=SceneSettings(1, 1, True, False))


def trainer(tmp_path: Path, **overrides) -> L.Trainer:
    kwargs = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                  default_root_dir=str(tmp_path))
    return L.Trainer(**{**kwargs, **overrides})


def stage1(teacher: Path, ratio: int = 3, **overrides) -> DMDLitModule:
    GeneratorSGD.steps = CriticSGD.steps = 0
    args = dict(network=DualStreamTransformer(**NETWORK), codec=tiny_codec(), teacher_from=str(teacher), clip=CLIP,
                optimizer=lambda p: GeneratorSGD(p, lr=0.05), critic_optimizer=lambda p: CriticSGD(p, lr=0.05),
                critic_steps_per_generator_step=ratio, times=[1.0, 0.5])
    return DMDLitModule(**{**args, **overrides})


def test_stage1_honours_the_update_ratio_and_keeps_the_teacher_frozen(teacher, tmp_path):
    module = stage1(teacher, ratio=3)
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    critic_before = {k: v.clone() for k, v in module.critic.state_dict().items()}
    network_before = {k: v.clone() for k, v in module.network.state_dict().items()}
    run = trainer(tmp_path, limit_train_batches=7, callbacks=[EMA(decay=0.5)])
    run.fit(module, captions_only(7))
    assert (GeneratorSGD.steps, CriticSGD.steps) == (3, 7)  # batches 0, 3, 6 update the generator
    assert run.global_step == 10 and int(module.distill_batches) == 7
    assert all(torch.equal(v, teacher_before[k]) for k, v in module.teacher.state_dict().items())
    assert not module.teacher.training and all(not p.requires_grad for p in module.teacher.parameters())
    assert any(not torch.equal(v, critic_before[k]) for k, v in module.critic.state_dict().items())
    assert any(not torch.equal(v, network_before[k]) for k, v in module.network.state_dict().items())
    logged = run.callback_metrics
    for key in ("train/loss_dmd", "train/loss_dmd_video", "train/loss_dmd_audio", "train/loss_critic",
                "train/exit_step", "train/grad_norm/video", "train/grad_norm/audio", "train/grad_norm_critic",
                "train/dmd_direction_audio"):
        assert key in logged, key
    assert logged["train/grad_norm"] > 0

    path = tmp_path / "stage1.ckpt"
    run.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # loadable without unpickling objects
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])  # rebuilt from teacher_from
    assert any(k.startswith("critic.") for k in checkpoint["state_dict"])
    ema = next(v for k, v in checkpoint["callbacks"].items() if "EMA" in k)["ema_state"]
    assert set(ema) == set(module.network.state_dict())  # EMA of the generator only
    fresh = stage1(teacher)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    assert int(fresh.distill_batches) == 7
    clips = fresh.generate_clips(["a red circle bounces"], seconds=1, seed=0)
    assert clips.video.shape == (1, 25, 16, 16, 3) and clips.audio.shape == (1, 16640)


def test_the_recipe_codec_must_be_the_teachers(teacher):
    with pytest.raises(ValueError, match="codec is not the teacher's.*latent_channels"):
        stage1(teacher, codec=tiny_codec(n_mels=8), network=DualStreamTransformer(**{**NETWORK, "audio_channels": 32}))


def test_stage3_rolls_out_with_the_cache_and_streams(teacher, tmp_path):
    GeneratorSGD.steps = CriticSGD.steps = 0
    student = DualStreamTransformer(**NETWORK, causal=True, num_audio_sinks=2)
    module = SelfForcingLitModule(student, tiny_codec(), str(teacher), clip=CLIP, init_from=str(
        teacher / "network.safetensors"), optimizer=lambda p: GeneratorSGD(p, lr=0.05),
        critic_optimizer=lambda p: CriticSGD(p, lr=0.05), critic_steps_per_generator_step=2, times=[1.0, 0.5])
    torch.testing.assert_close(student.video.proj_in.weight, module.teacher.video.proj_in.weight)  # init_from
    sinks = student.audio.sinks.detach().clone()
    run = trainer(tmp_path, limit_train_batches=3)
    run.fit(module, captions_only(3))
    assert (GeneratorSGD.steps, CriticSGD.steps) == (2, 3)
    assert "train/grad_norm/sinks" in run.callback_metrics and run.callback_metrics["train/grad_norm/sinks"] > 0
    assert not torch.equal(student.audio.sinks, sinks)  # the new sinks train from their own init
    clips = module.generate_clips(["a blue square thuds", "ping"], seconds=2, seed=1)
    assert clips.video.shape == (2, 49, 16, 16, 3) and clips.audio.shape == (2, 32640)
    with pytest.raises(ValueError, match="causal student"):
        SelfForcingLitModule(DualStreamTransformer(**NETWORK), tiny_codec(), str(teacher), clip=CLIP)


def test_stage3_logs_per_modality_streaming_samples_and_evaluation_metrics(teacher, tmp_path):
    student = DualStreamTransformer(**NETWORK, causal=True, num_audio_sinks=2)
    module = SelfForcingLitModule(student, tiny_codec(), str(teacher), clip=CLIP, init_from=str(
        teacher / "network.safetensors"), critic_steps_per_generator_step=1, times=[1.0, 0.5])
    evaluation = PeriodicEvaluation(every_n_steps=2, clips=2, batch_size=2, time_budget_s=None,
                                    cache_dir=str(tmp_path / "metric_cache"))
    logger = TensorBoardLogger(str(tmp_path), name="stage3", version=0)
    samples = SampleLogger(prompts=["a red circle bounces"], seconds=1)
    run = trainer(tmp_path, max_steps=2, max_epochs=-1, logger=logger, log_every_n_steps=1, limit_val_batches=1,
                  val_check_interval=1, callbacks=[samples, evaluation])
    run.fit(module, captions_only(2))
    assert evaluation.generation_failures == 0 and run.callback_metrics["val/eval_clips"] == 2
    for key in ("val/fd_video_stats", "val/fd_audio_stats", "val/av_align", "val/loss_dmd", "val/loss_critic"):
        assert torch.isfinite(run.callback_metrics[key]), key
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    # streamed clips logged per modality: video GIF, audio and mel spectrogram, by the sample logger and evaluation
    assert {"samples/0/video", "samples/0/mel", "val_media/0/video", "val_media/0/mel"} <= set(
        events.Tags()["images"])  # the GIF is an image summary
    assert {"samples/0/audio", "val_media/0/audio"} <= set(events.Tags()["audio"])
    assert {"train/grad_norm/sinks", "train/grad_norm/video", "train/grad_norm/audio",
            "train/exit_step"} <= set(events.Tags()["scalars"])


def test_stage2_trains_on_ode_pairs_on_the_student_grid(teacher, tmp_path):
    pairs = tmp_path / "pairs"
    main(["data", "ode-pairs", "--teacher", str(teacher), "--out", str(pairs), "--count", "4", "--seconds", "1",
          "--steps", "4", "--student-times", "[1.0, 0.5]", "--shard-size", "2", "--device", "cpu"])
    data = ODEPairDataModule(str(pairs), str(pairs), clip=CLIP, batch_size=2, num_workers=0)
    student = DualStreamTransformer(**NETWORK, causal=True, num_audio_sinks=2)
    module = ODERegressionLitModule(student, tiny_codec(), clip=CLIP, times=[1.0, 0.5],
                                    init_from=str(teacher / "network.safetensors"),
                                    optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    run = trainer(tmp_path, max_steps=3, max_epochs=-1, limit_val_batches=1, val_check_interval=2,
                  check_val_every_n_epoch=None)
    run.fit(module, data)
    assert run.global_step == 3 and torch.isfinite(run.callback_metrics["val/loss"])
    assert run.callback_metrics["train/loss"] > 0
    wrong = ODERegressionLitModule(DualStreamTransformer(**NETWORK, causal=True), tiny_codec(), clip=CLIP,
                                   times=[1.0, 0.75, 0.5, 0.25])
    with pytest.raises(ValueError, match="made for times .* regenerate them with --student-times"):
        trainer(tmp_path, max_steps=1).fit(wrong, data)
    longer = ODERegressionLitModule(DualStreamTransformer(**NETWORK, causal=True), tiny_codec(),
                                    clip=ClipSpec(seconds=2, size=16), times=[1.0, 0.5])
    with pytest.raises(ValueError, match="26 audio latents, clips of 2 s have 51"):
        trainer(tmp_path, max_steps=1).fit(longer, data)


# -------------------------------------------------------------------- distributed
class ExitStepRecorder(L.Callback):
    """Records the exit steps a rank draws and a checksum of its generator weights (importable by class_path)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.steps = out_dir, []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        draw = pl_module.draw_exit_step

        def recording(shared):
            self.steps.append(draw(shared))
            return self.steps[-1]

        pl_module.draw_exit_step = recording

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checksum = float(sum(p.double().sum() for p in pl_module.network.parameters()))
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(
            {"steps": self.steps, "checksum": checksum, "world": trainer.world_size, "pid": os.getpid()}))


@pytest.mark.slow
def test_two_ranks_draw_the_same_exit_steps_and_stay_in_sync(tmp_path):
    teacher = patch_teacher(tmp_path)
    out = tmp_path / "ranks"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "omniforcing", "fit", *stage_args("stage3", tmp_path, teacher),
               "-c", str(RECIPES / "omniforcing" / "ddp.yaml"), "--trainer.max_steps=12",
               "--trainer.limit_val_batches=0", "--trainer.devices=2", "--trainer.accelerator=cpu",
               "--model.init_args.critic_steps_per_generator_step=1",
               "--trainer.callbacks+=test_omniforcing_modules.ExitStepRecorder",
               f"--trainer.callbacks.init_args.out_dir={out}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["pid"] != ranks[1]["pid"]
    assert len(ranks[0]["steps"]) == 12 and ranks[0]["steps"] == ranks[1]["steps"]
    assert len(set(ranks[0]["steps"])) > 1  # a real draw, not a constant
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)  # gradients were all-reduced


# -------------------------------------------------------------------- recipes
RECIPES = REPO / "recipes"
STAGES = {
    "stage1": ["data/synthetic.yaml", "omniforcing/stage1_dmd.yaml"],
    "stage2": ["omniforcing/data/ode_pairs.yaml", "omniforcing/stage2_ode.yaml"],
    "stage3": ["data/synthetic.yaml", "omniforcing/stage3_self_forcing.yaml"],
}
OVERLAYS = [("stage1", []), ("stage2", []), ("stage3", []),
            ("stage2", ["omniforcing/v2/stage2_ode.yaml"]), ("stage3", ["omniforcing/v2/stage3_self_forcing.yaml"])]
OVERLAYS += [(stage, [f"omniforcing/ablations/{name}.yaml"]) for stage in ("stage2", "stage3")
             for name in ("no_sinks", "sinks_with_rope", "no_prefix", "naive_causal")]
# one parse costs ~2 s (a LightningCLI parser per call): the plain stages and one overlay of each kind run by
# default, the rest with the slow tests
FAST_PARSES = {0, 1, 2, 12}
PARSES = [pytest.param(*combo, marks=() if i in FAST_PARSES else pytest.mark.slow) for i, combo in enumerate(OVERLAYS)]


def stage_args(stage: str, tmp_path: Path, teacher: Path, overlay: list[str] = (), pairs: Path | None = None,
               init_from: str | None = None) -> list[str]:
    files = ["base.yaml", *STAGES[stage][:1], STAGES[stage][1], *overlay, "latents/patch.yaml", "model/tiny.yaml",
             "omniforcing/debug/tiny_cpu.yaml"]
    args = [a for name in files for a in ("-c", str(RECIPES / name))]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
             "--trainer.enable_model_summary=false"]
    if stage != "stage2":
        args.append(f"--model.init_args.teacher_from={teacher}")
    if stage != "stage1":
        args.append(f"--model.init_args.init_from={init_from or teacher / 'network.safetensors'}")
    if pairs is not None:
        args += [f"--data.init_args.train_shards={pairs}", f"--data.init_args.val_shards={pairs}"]
    return args


def patch_teacher(tmp_path: Path) -> Path:
    """A teacher matching recipes/latents/patch.yaml + recipes/model/tiny.yaml."""
    data = yaml.safe_load((RECIPES / "model" / "tiny.yaml").read_text())["model"]["init_args"]["network"]
    args = {**data["init_args"], "video_channels": 1536, "audio_channels": 256}
    tree = {"class_path": "omniforcing.codecs.AVCodec", "init_args": {
        "video": {"class_path": "omniforcing.codecs.PatchVideoCodec"},
        "audio": {"class_path": "omniforcing.codecs.MelAudioCodec"}}}
    return export_teacher(tmp_path / "patch_teacher", args, AVCodec(PatchVideoCodec(), MelAudioCodec()), tree)


@pytest.mark.parametrize(("stage", "overlay"), PARSES, ids=lambda x: x if isinstance(x, str) else
                         "+".join(Path(f).stem for f in x) or "plain")
def test_recipe_parses(stage, overlay, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", *stage_args(stage, tmp_path, tmp_path / "teacher", list(overlay)), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    network = config["model"]["init_args"]["network"]["init_args"]
    assert config["trainer"]["gradient_clip_val"] == (1.0 if stage == "stage2" else None)
    assert network["causal"] == (stage != "stage1") and network["video_channels"] == 1536
    names = [Path(f).stem for f in overlay]
    if stage != "stage1":
        assert network["num_audio_sinks"] == (0 if {"no_sinks", "naive_causal", "v2"} & set(names)
                                              or "stage2_ode" in names or "stage3_self_forcing" in names else 16)
        assert network["prefix"] == ("v2" if {"no_prefix", "naive_causal"} & set(names) or any(
            f.startswith("omniforcing/v2/") for f in overlay) else "v1")
        assert network["sink_rope"] == ("position0" if "sinks_with_rope" in names else "identity")


@pytest.mark.slow
def test_every_recipe_runs_a_few_steps_at_tiny_size(tmp_path):
    teacher = patch_teacher(tmp_path)
    pairs = tmp_path / "pairs"
    main(["data", "ode-pairs", "--teacher", str(teacher), "--out", str(pairs), "--count", "2", "--seconds", "1",
          "--steps", "4", "--device", "cpu"])
    for stage, overlay in OVERLAYS:
        main(["fit", *stage_args(stage, tmp_path, teacher, overlay, pairs if stage == "stage2" else None),
              "--trainer.max_steps=2", "--trainer.limit_val_batches=0"])
    runs = [p for p in (tmp_path / "runs").rglob("last.ckpt")]
    assert len(runs) == len(OVERLAYS)


# -------------------------------------------------------------------- the one-command pipeline
@pytest.mark.slow
def test_the_tiny_pipeline_runs_teacher_to_stage3_and_streams(tmp_path):
    from omniforcing.data.media import read_av
    from omniforcing.pipelines.omniforcing import run_pipeline

    tiny = dict(teacher_steps=4, stage1_steps=4, pairs=4, ode_steps=8, stage2_steps=3, stage3_steps=3,
                stream_seconds=3, window=1.0)
    summary = run_pipeline(tmp_path, **tiny)
    assert set(summary["checkpoints"]) == {"teacher", "stage1", "stage2", "stage3"}
    assert json.loads((tmp_path / "pipeline.json").read_text())["checkpoints"] == summary["checkpoints"]
    assert json.loads((tmp_path / "pairs" / "train" / "dataset.json").read_text())["complete"]
    stream = summary["stream"]
    assert stream["blocks"] == 4 and stream["seconds_streamed"] == pytest.approx(73 / 24)
    assert stream["cache_bytes"][-1] == stream["cache_bytes"][-2]  # rolling 1-s window: the cache stays bounded
    clip = read_av(tmp_path / "clip.mp4")
    assert clip.video.shape[0] == 73 and clip.audio.shape[-1] > 0
    checkpoints = {name: Path(path) for name, path in summary["checkpoints"].items()}
    written = {name: path.stat().st_mtime_ns for name, path in checkpoints.items()}
    checkpoints["stage3"].unlink()  # an interrupted Stage III: its version_0 folder exists without last.ckpt
    again = run_pipeline(tmp_path, **tiny)  # complete stages are not trained again, the interrupted one is
    assert all(checkpoints[name].stat().st_mtime_ns == written[name] for name in ("teacher", "stage1", "stage2"))
    assert all(again["wall_seconds"][name] > 0 for name in ("teacher", "stage1", "stage2"))  # from their events
    assert checkpoints["stage3"].is_file()
    assert len(list(checkpoints["stage3"].parents[1].glob("events.out.tfevents.*"))) == 1  # the old run removed


def test_a_stage_without_last_ckpt_restarts_in_a_clean_folder(tmp_path, monkeypatch):
    import omniforcing.cli
    from omniforcing.pipelines.omniforcing import fit_stage

    version = tmp_path / "runs" / "stage2" / "version_0"
    (version / "checkpoints").mkdir(parents=True)
    (version / "events.out.tfevents.interrupted").write_text("")
    calls = []

    def fake_main(args):  # what the stage sees: a fresh folder
        calls.append((list(args), version.exists()))
        (version / "checkpoints").mkdir(parents=True)
        (version / "checkpoints" / "last.ckpt").write_text("")

    monkeypatch.setattr(omniforcing.cli, "main", fake_main)
    checkpoint, _ = fit_stage("stage2", "stage2", tmp_path, ["--seed_everything=0"], [])
    assert checkpoint == version / "checkpoints" / "last.ckpt" and len(calls) == 1
    args, existed = calls[0]
    assert args[0] == "fit" and "--trainer.logger.init_args.name=stage2" in args
    assert not existed  # the interrupted run was removed
    assert not (version / "events.out.tfevents.interrupted").exists()
    assert fit_stage("stage2", "stage2", tmp_path, [], [])[0] == checkpoint and len(calls) == 1  # done: skipped
