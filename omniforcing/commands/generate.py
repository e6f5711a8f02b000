"""``omniforcing generate``: prompt -> mp4 with sound, from a checkpoint, an exported folder or a reference name."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from omniforcing.data.media import write_mp4
from omniforcing.inference.export import load_model
from omniforcing.inference.generation import generate_teacher_clips


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        ("cpu" if device == "auto" else device))


def generate(
    *,
    checkpoint: str,
    prompt: str,
    seconds: int,
    out: Path,
    steps: int | None = None,
    window: float | None = None,
    cfg: float | None = None,
    audio_cfg: float | None = None,
    seed: int = 0,
    device: str = "auto",
) -> None:
    """Generate one clip for a prompt and write it as an mp4 (H.264 + AAC).

    Args:
        checkpoint: a Lightning ``.ckpt`` from ``omniforcing fit``, or a folder from ``omniforcing export``.
        prompt: the caption to generate.
        seconds: seconds of content after the lead frame.
        out: output ``.mp4`` path.
        steps: sampler steps (default: the model's recorded setting).
        window: streaming students only: KV-cache window in seconds.
        cfg: classifier-free guidance scale for video (and audio unless ``audio_cfg`` is given).
        audio_cfg: guidance scale for audio.
        seed: noise seed.
        device: ``auto``, ``cpu`` or ``cuda``.
    """
    network, codec, config = load_model(checkpoint, resolve_device(device))
    if getattr(network, "causal", False):
        raise SystemExit("streaming generation of causal students is provided by omniforcing.inference.streaming")
    if window is not None:
        print("note: --window applies to streaming students; a bidirectional model generates the whole clip")
    start = time.perf_counter()
    clips = generate_teacher_clips(network, codec, config, [prompt], seconds, seed, steps, cfg,
                                   audio_cfg if audio_cfg is not None else cfg)
    elapsed = time.perf_counter() - start
    if clips.video is None:
        raise SystemExit("this model generates audio only; an mp4 needs a video stream")
    # yuv420p: the pixel format every player decodes (shards use 4:4:4 for fidelity, see docs/data.md)
    write_mp4(out, clips.video[0].numpy(), clips.fps, None if clips.audio is None else clips.audio[0].numpy(),
              clips.sample_rate, pixel_format="yuv420p")
    print(f"wrote {out} ({seconds} s + lead) in {elapsed:.2f} s: whole clip at once (bidirectional model)")
