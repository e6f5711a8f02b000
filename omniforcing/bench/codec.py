"""Codec benchmark: reconstruction quality and encode/decode throughput, patch vs learned codecs.

Reconstruction is measured on held-out synthetic clips (``omniforcing.data.synthetic``, default scene
settings, dataset seed 12345): video PSNR against the mean-frame baseline (every frame predicted by the
clip's mean frame), audio spectral convergence of the waveform's STFT magnitude (0 is perfect, 1 is
silence). The learned codecs' reconstruction is only reported for trained weights given by path; their
throughput does not depend on the weights and is always measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from omniforcing.bench.report import Report, Table
from omniforcing.codecs import (
    CausalVideoAutoencoder,
    MelAudioCodec,
    MelAutoencoder,
    PatchVideoCodec,
    load_codec,
)
from omniforcing.codecs.losses import boundary_step_errors, mean_frame_psnr, psnr, spectral_convergence
from omniforcing.data.synthetic import synthesize_clip
from omniforcing.types import ClipSpec

BENCH_SEED = 12345


def synthetic_batch(clips: int, seconds: int) -> tuple[Tensor, Tensor]:
    """Video ``(N, 1 + 24 s, 3, 32, 32)`` in ``[-1, 1]`` and audio ``(N, 1, 16000 s + 640)`` of held-out clips."""
    spec = ClipSpec(seconds=seconds)
    made = [synthesize_clip(BENCH_SEED, i, spec) for i in range(clips)]
    video = torch.stack([torch.from_numpy(c.video) for c in made]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    audio = torch.stack([torch.from_numpy(c.audio) for c in made])[:, None]
    return video, audio


def _best_seconds(fn: Callable[[], Tensor], repeats: int) -> float:
    fn()  # warm-up (allocations, kernels)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def _throughput_row(name: str, codec: nn.Module, clip: Tensor, seconds: int, repeats: int) -> list:
    latents = codec.encode(clip)
    encode_s = _best_seconds(lambda: codec.encode(clip), repeats)
    decode_s = _best_seconds(lambda: codec.decode(latents), repeats)
    media_seconds = clip.shape[0] * seconds
    return [name, tuple(latents.shape[1:]), 1000 * encode_s / media_seconds, 1000 * decode_s / media_seconds,
            media_seconds / decode_s]


@torch.no_grad()
def _block_latency_ms(codec: nn.Module, clip: Tensor, repeats: int) -> float:
    """Milliseconds to decode the newest 1-s block of one stream (batch 1) as a streaming player would."""
    latents = codec.encode(clip[:1])
    if hasattr(codec, "decode_tail"):
        per_second = codec.latent_rate
        return 1000 * _best_seconds(lambda: codec.decode_tail(latents, per_second), repeats)
    block = latents[:, -codec.latent_rate:]
    return 1000 * _best_seconds(lambda: codec.decode(block), repeats)


def _video_quality(name: str, codec: nn.Module, video: Tensor) -> list:
    with torch.no_grad():
        recon = codec.decode(codec.encode(video))
    boundary, inner = boundary_step_errors(recon, video, codec.temporal_stride)
    return [name, psnr(recon, video).mean().item(), mean_frame_psnr(video).mean().item(),
            (recon - video).abs().max().item(), boundary.item(), inner.item()]


def _audio_quality(name: str, codec: nn.Module, audio: Tensor, analysis: MelAudioCodec) -> list:
    with torch.no_grad():
        recon = codec.decode(codec.encode(audio))
    reference = analysis.power_spectrogram(audio).sqrt()
    estimate = analysis.power_spectrogram(recon).sqrt()
    return [name, spectral_convergence(reference, estimate).mean().item()]


def _speed_table(video: Tensor, audio: Tensor, mel: MelAudioCodec, trained_video: nn.Module | None,
                 trained_audio: nn.Module | None, seconds: int, repeats: int) -> tuple[Table, dict]:
    clips = video.shape[0]
    speed = Table("codec throughput (batched clips; torch threads as in the machine line)",
                  ["codec", "latent shape (T, C, ...)", "encode ms per s", "decode ms per s", "decode x real time",
                   "1-s block decode ms"],
                  notes=f"{min(clips, 8)} clips x {seconds} s, best of {repeats}; learned codecs at their default "
                        "sizes. Block decode: the newest second of one stream (batch 1; audio: 25 latents by "
                        "Griffin-Lim).")
    batch = slice(0, min(clips, 8))
    for name, codec, clip in (
        ("patch video", PatchVideoCodec().eval(), video[batch]),
        ("learned video", trained_video or CausalVideoAutoencoder().eval(), video[batch]),
        ("mel audio", mel, audio[batch]),
        ("learned audio", trained_audio or MelAutoencoder(mel=mel).eval(), audio[batch]),
    ):
        speed.add(*_throughput_row(name, codec, clip, seconds, repeats), _block_latency_ms(codec, clip, repeats))
    return speed, {}


def _video_quality_table(video: Tensor, trained_video: nn.Module | None,
                         video_checkpoint: str | None) -> tuple[Table, dict]:
    quality = Table("codec reconstruction on held-out synthetic clips",
                    ["codec", "PSNR dB", "mean-frame baseline dB", "max abs error", "boundary step error",
                     "inner step error"],
                    notes="video in [-1, 1] (PSNR peak-to-peak 2); patch codec is exact up to float rounding. "
                          "Step errors: mean error of frame-to-frame changes across latent boundaries vs inside "
                          "latents (boundary > inner means 8-frame flicker).")
    rows = [_video_quality("patch video", PatchVideoCodec().eval(), video)]
    if trained_video is not None:
        rows.append(_video_quality(f"learned video ({video_checkpoint})", trained_video, video))
    for row in rows:
        quality.add(*row)
    return quality, {"video_psnr": {r[0]: r[1] for r in rows}, "mean_frame_psnr": rows[0][2]}


def _audio_quality_table(audio: Tensor, mel: MelAudioCodec, trained_audio: nn.Module | None,
                         audio_checkpoint: str | None) -> tuple[Table, dict]:
    audio_quality = Table("audio reconstruction (spectral convergence of STFT magnitude, lower is better)",
                          ["codec", "spectral convergence"],
                          notes="Griffin-Lim with the mel codec's settings; 0 is perfect, 1 is silence.")
    audio_quality.add(*_audio_quality("mel audio", mel, audio, mel))
    if trained_audio is not None:
        audio_quality.add(*_audio_quality(f"learned audio ({audio_checkpoint})", trained_audio, audio, mel))
    return audio_quality, {"audio_spectral_convergence": {r[0]: r[1] for r in audio_quality.rows}}


def run_codec_bench(quick: bool = False, video_checkpoint: str | None = None, audio_checkpoint: str | None = None,
                    on_table: Callable[[Report], None] | None = None) -> Report:
    """Measure the codecs and return the tables.

    Args:
        quick: fewer clips and repeats (a smoke run; numbers are noisier).
        video_checkpoint: trained :class:`CausalVideoAutoencoder` (``.safetensors`` from ``save_codec``), for
            its reconstruction row.
        audio_checkpoint: trained :class:`MelAutoencoder`, for its reconstruction row.
        on_table: called with the report after every table (see :meth:`Report.measure`); a table that raises
            is recorded with its error and the next one runs.

    Returns:
        A report with a throughput table and two reconstruction tables (summary: PSNRs and spectral convergence).
    """
    clips, seconds, repeats = (4, 1, 2) if quick else (32, 2, 5)
    video, audio = synthetic_batch(clips, seconds)
    mel = MelAudioCodec().eval()
    mel.fit_normalization(audio.split(8))
    trained_video = load_codec(video_checkpoint) if video_checkpoint else None
    trained_audio = load_codec(audio_checkpoint) if audio_checkpoint else None
    report = Report(suite="codec", on_table=on_table)
    report.measure("codec throughput", lambda: _speed_table(video, audio, mel, trained_video, trained_audio,
                                                            seconds, repeats))
    report.measure("codec reconstruction on held-out synthetic clips",
                   lambda: _video_quality_table(video, trained_video, video_checkpoint))
    report.measure("audio reconstruction",
                   lambda: _audio_quality_table(audio, mel, trained_audio, audio_checkpoint))
    return report
