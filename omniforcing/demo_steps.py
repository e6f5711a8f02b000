"""Measurements the quickstart (:mod:`omniforcing.demo`) prints: codec reconstruction, metrics and speed.

Kept apart from the demo's step sequence so each function can be read (and reused) on its own.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from omniforcing.bench.report import Table
from omniforcing.codecs import load_codec
from omniforcing.data.datamodule import AVDataModule
from omniforcing.data.media import read_av
from omniforcing.data.mp4_writers import write_mp4
from omniforcing.inference.clips import to_uint8_video
from omniforcing.metrics import MetricSuite
from omniforcing.pipelines.omniforcing_results import (
    EVAL_SEED,
    SCENE,
    evaluate,
    first_block_seconds,
    latency,
    reference_batches,
    streamed_clips,
    teacher_clips,
)
from omniforcing.types import AVBatch, ClipSpec

EVAL_SECONDS = 2


def validation_batch(shards: Path, count: int = 8, seconds: int = 2) -> AVBatch:
    """The first ``count`` clips of a shard folder, windows from frame 0 (video in [-1, 1])."""
    data = AVDataModule(str(shards), str(shards), ClipSpec(seconds=seconds), batch_size=count, num_workers=0)
    return next(iter(data.val_dataloader()))


def psnr(reference: Tensor, estimate: Tensor) -> float:
    """PSNR in dB of video in ``[-1, 1]`` (peak-to-peak 2)."""
    mse = (reference.float() - estimate.float().clamp(-1, 1)).pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def codec_psnr(video_codec: Path, shards: Path) -> float:
    """Video reconstruction PSNR of a saved video codec (safetensors or codec-training ``.ckpt``) on 1-s clips."""
    codec = load_codec(video_codec)
    batch = validation_batch(shards, seconds=1)
    return psnr(batch.video, codec.decode(codec.encode(batch.video)))


@torch.no_grad()
def codec_preview(video_codec: Path, audio_codec: Path, shards: Path, out: Path) -> float:
    """Write ``out`` (original | reconstruction side by side, reconstructed sound); returns the clip's PSNR."""
    video, audio = load_codec(video_codec), load_codec(audio_codec)
    batch = validation_batch(shards, count=1)
    recon = video.decode(video.encode(batch.video))[:, : batch.video.shape[1]]
    sound = audio.decode(audio.encode(batch.audio))[..., : batch.audio.shape[-1]]
    side_by_side = torch.cat([batch.video, recon.clamp(-1, 1)], dim=-1)  # (1, T, 3, H, 2W)
    write_mp4(out, to_uint8_video(side_by_side)[0], 24, sound[0, 0], sample_rate=16000,
              pixel_format="yuv420p")  # 4:2:0 plays in every browser and player
    return psnr(batch.video, recon)


def stream_summary(path: Path) -> dict[str, float]:
    """Length of each stream of a written mp4 in seconds (read back: the file is complete and playable)."""
    clip = read_av(path)
    return {"video_seconds": clip.video.shape[0] / clip.fps,
            "audio_seconds": clip.audio.shape[-1] / clip.sample_rate}


def evaluation_table(models: dict[str, tuple[str, bool]], clips: int, cache_dir: Path) -> Table:
    """Weight-free metrics, sync and speed of each model on ``clips`` held-out synthetic prompts.

    Args:
        models: display name -> (checkpoint or exported folder, whether it is a causal student that streams).
        clips: prompts (and synthetic reference clips of the training distribution, seed ``EVAL_SEED``).
        cache_dir: where the reference statistics are cached.
    """
    clip = ClipSpec(seconds=EVAL_SECONDS)
    batches, captions = reference_batches(clip, clips)
    suite = MetricSuite(["video_stats", "audio_stats", "sync"])
    suite.prepare_real_stats(batches, fps=clip.fps, sample_rate=clip.sample_rate, cache_dir=cache_dir,
                             description=f"synthetic seed {EVAL_SEED}, {clips} clips of {EVAL_SECONDS} s, {SCENE}")
    table = Table(f"Quickstart results ({clips} held-out prompts, {EVAL_SECONDS}-s clips)",
                  ["model", "sampler", "FD video stats", "FD audio stats", "AV-Align", "event F1 (AV)",
                   "s per clip", "x real time", "first block (s)"])
    for name, (path, causal) in models.items():
        if causal:
            generate, sampler = streamed_clips(path), "4 steps, streamed (KV cache)"
        else:
            generate, sampler = teacher_clips(path, None)
            sampler += ", whole clip"
        values = evaluate(suite, generate, captions, EVAL_SECONDS, clip.fps, clip.sample_rate)
        seconds = latency(generate, EVAL_SECONDS)
        table.add(name, sampler,
                  values.get("fd_video_stats", float("nan")), values.get("fd_audio_stats", float("nan")),
                  values.get("av_align", float("nan")), values.get("event_f1_audio_visual", float("nan")),
                  seconds, EVAL_SECONDS / seconds, first_block_seconds(path, EVAL_SECONDS) if causal else "-")
    table.notes = ("FD: Fréchet distance of the weight-free statistics extractors (not FVD/FAD; lower is better). "
                   "x real time: media seconds generated per wall second (batch 1, generation + decoding, median "
                   "of 3); > 1 is faster than real time. Measured now, on this machine.")
    return table
