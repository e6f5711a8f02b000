"""The Mutual Forcing chain in one command: video-only -> audio-only -> couple -> joint -> stream a clip.

::

    python -m omniforcing.pipelines.mutual_forcing --out runs/mutual_forcing_pipeline --steps 20

Each stage is ``omniforcing fit`` with the stage's recipe (``recipes/mutual_forcing/*.yaml``) on synthetic
data; the joint stage couples the two uni-modal checkpoints (``init_video_from`` / ``init_audio_from``); the
joint checkpoint is exported and a clip is streamed block by block in the few-step mode against the rolling
KV cache by the engine every causal student streams with (``StreamingGenerator``) and written as an mp4. With
the patch latents (the default), the codecs' latent statistics are first fitted on synthetic clips, so the
model sees normalised latents. Runs on a CPU at the tiny size in minutes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from omniforcing.codecs import MelAudioCodec, PatchVideoCodec, save_codec
from omniforcing.data.mp4_writers import write_mp4
from omniforcing.data.synthetic import SceneSettings, synthesize_clip
from omniforcing.inference.export import export_checkpoint
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.types import ClipSpec

log = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
STAGES = ("video_only", "audio_only", "joint")
# the synthetic scenes of recipes/data/synthetic.yaml
SCENE = SceneSettings(min_objects=1, max_objects=1, fixed_size=True, background_sound=False)


def fit_patch_codec_statistics(out: Path, clip: ClipSpec, clips: int = 64, seed: int = 0) -> list[str]:
    """Fit the patch/mel codecs' latent statistics on synthetic clips; returns the CLI overrides that load them."""
    video_codec, audio_codec = PatchVideoCodec(size=clip.size), MelAudioCodec(sample_rate=clip.sample_rate)
    made = [synthesize_clip(seed + 1_000_000, i, clip, SCENE) for i in range(clips)]  # not the training clips
    video = [torch.from_numpy(c.video).float().div(127.5).sub(1).permute(0, 3, 1, 2)[None] for c in made]
    video_codec.fit_normalization(video)
    audio_codec.fit_normalization(torch.from_numpy(c.audio).float()[None, None] for c in made)
    video_path = save_codec(video_codec, out / "codec" / "patch_video.safetensors")
    audio_path = save_codec(audio_codec, out / "codec" / "mel_audio.safetensors")
    return [f"--model.init_args.codec.init_args.video.init_args.checkpoint={video_path}",
            f"--model.init_args.codec.init_args.audio.init_args.checkpoint={audio_path}"]


def write_trainer_overrides(out: Path, ema_decay: float) -> Path:
    """A config replacing base.yaml's callbacks for short runs: last checkpoint + an EMA from the first step.

    The EMA warms up (``min(ema_decay, (1 + n) / (10 + n))`` at its ``n``-th update, callbacks/ema.py), so a run of
    tens of steps exports an average of its last steps, not mostly its starting weights.
    """
    config = {"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 100}},
        {"class_path": "omniforcing.callbacks.EMA", "init_args": {"decay": ema_decay, "start_step": 0, "warmup": True}},
        {"class_path": "omniforcing.callbacks.Throughput"},
    ]}}
    path = out / "pipeline_trainer.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def fit_stage(stage: str, out: Path, shared_args: list[str], extra: list[str] | None = None) -> Path:
    """Run ``omniforcing fit`` for one stage; returns its ``last.ckpt``."""
    from omniforcing.cli import main

    recipes = ["base.yaml", "data/synthetic.yaml", f"mutual_forcing/{stage}.yaml"]
    args = [arg for name in recipes for arg in ("-c", str(RECIPES / name))]
    main(["fit", *args, *shared_args, *(extra or [])])
    runs = sorted((out / "runs" / f"mutual_forcing_{stage}").glob("version_*/checkpoints/last.ckpt"),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise RuntimeError(f"stage {stage} wrote no last.ckpt under {out / 'runs'}")
    return runs[-1]


def stream_clip(exported: Path, prompt: str, seconds: int, out_file: Path, seed: int = 0) -> dict:
    """Stream one clip in the few-step mode with the streaming engine; write it as an mp4; return the timings.

    The engine is the one every causal student streams with
    (:class:`~omniforcing.inference.streaming.StreamingGenerator`): it reads the few-step times, the step size
    and the window the model recorded, and decodes each block as soon as it exists.
    """
    generator = StreamingGenerator.from_pretrained(exported)
    blocks = list(generator.stream(prompt, seconds, seed))
    video = torch.cat([b.video for b in blocks]).numpy()
    audio = torch.cat([b.audio for b in blocks]).numpy()
    write_mp4(out_file, video, generator.codec.video.fps, audio, generator.codec.audio.sample_rate,
              pixel_format="yuv420p")
    return {"clip": str(out_file), "blocks": len(blocks), "step_size": generator.settings.step_size,
            "time_to_first_block_s": blocks[0].ready_seconds,
            "block_latency_s": [(b.generate_ms + b.decode_ms) / 1e3 for b in blocks],
            "seconds_generated": video.shape[0] / generator.codec.video.fps}


def run_pipeline(out: Path = Path("runs/mutual_forcing_pipeline"), *, steps: int = 20, joint_steps: int | None = None,
                 seconds: int = 2, stream_seconds: int = 4, batch_size: int = 4, model: str = "tiny",
                 latents: str = "patch", ema_decay: float = 0.99,
                 prompt: str = "a red circle bounces; the circle rings",
                 seed: int = 0, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    """Train video-only, audio-only and joint Mutual Forcing models, export the joint one and stream a clip.

    Args:
        out: output folder (runs, codec statistics, exported model, ``clip.mp4``, ``summary.json``).
        steps: optimiser steps of each uni-modal stage.
        joint_steps: optimiser steps of the joint stage (``None``: ``steps``).
        seconds: training clip length (whole seconds after the lead; >= 2 lets the history length vary).
        stream_seconds: seconds of the streamed clip (longer than training is allowed).
        batch_size: clips per step.
        model: size recipe ``recipes/model/<model>.yaml``.
        latents: latent recipe ``recipes/latents/<latents>.yaml`` (``patch`` fits its statistics first).
        ema_decay: EMA decay cap of the weights that are coupled and exported (reached after a warm-up of
            ``(10 decay - 1) / (1 - decay)`` updates, 890 for 0.99: short runs average their last steps).
        prompt: caption of the streamed clip.
        seed: run seed.
        threads: torch CPU threads (``None``: torch's default).
        overrides: extra ``omniforcing fit`` arguments for every stage (e.g. a longer ``text_max_length``).

    Returns:
        Summary: checkpoints per stage, exported folder, clip path, blocks, per-block latency.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        torch.set_num_threads(threads)
    clip = ClipSpec(seconds=seconds)
    shared = ["-c", str(RECIPES / "latents" / f"{latents}.yaml"), "-c", str(RECIPES / "model" / f"{model}.yaml"),
              "-c", str(write_trainer_overrides(out, ema_decay)), "--trainer.limit_val_batches=0",
              f"--seed_everything={seed}",
              f"--trainer.log_every_n_steps={min(10, steps)}", "--trainer.enable_progress_bar=false",
              f"--trainer.logger.init_args.save_dir={out / 'runs'}", f"--data.init_args.clip.seconds={seconds}",
              f"--data.init_args.batch_size={batch_size}", "--data.init_args.num_workers=0", *(overrides or [])]
    if latents == "patch":
        shared += fit_patch_codec_statistics(out, clip, seed=seed)
    checkpoints = {"video_only": fit_stage("video_only", out, [*shared, f"--trainer.max_steps={steps}"])}
    checkpoints["audio_only"] = fit_stage("audio_only", out, [*shared, f"--trainer.max_steps={steps}"])
    checkpoints["joint"] = fit_stage("joint", out, [*shared, f"--trainer.max_steps={joint_steps or steps}"], [
        f"--model.init_args.init_video_from={checkpoints['video_only']}",
        f"--model.init_args.init_audio_from={checkpoints['audio_only']}"])
    exported = export_checkpoint(checkpoints["joint"], out / "exported")
    summary = {"checkpoints": {k: str(v) for k, v in checkpoints.items()}, "exported": str(exported),
               **stream_clip(exported, prompt, stream_seconds, out / "clip.mp4", seed)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    """Command line: ``python -m omniforcing.pipelines.mutual_forcing --out DIR [--steps N] ...``."""
    from jsonargparse import CLI

    summary = CLI(run_pipeline, as_positional=False)
    latency = summary["block_latency_s"]
    print(f"streamed {summary['blocks']} blocks ({summary['seconds_generated']:.2f} s) -> {summary['clip']}; "
          f"first block {latency[0]:.3f} s, mean later block {sum(latency[1:]) / max(1, len(latency) - 1):.3f} s")


if __name__ == "__main__":
    main()
