"""Models side by side (teachers on different latent spaces, students): contact sheets of frames and metrics.

::

    python -m omniforcing.pipelines.codec_comparison \\
        --teachers '{"patch codec": "runs/omniforcing_small/runs/teacher/version_0/checkpoints/last.ckpt",
                     "learned codec": "runs/reference/teacher/version_0/checkpoints/last.ckpt"}' \\
        --out docs/media/codec_comparison

For each teacher: ``clips`` clips for held-out synthetic prompts (its recorded sampler and CFG), a contact sheet
(one row per clip, every ``frame_stride``-th frame; the top row of each block is a real clip of the same prompt
for reference) as ``<out>_<name>.png``, and the weight-free metrics of :class:`~omniforcing.metrics.MetricSuite`
against synthetic reference clips. Prints a markdown table and writes ``<out>.md`` / ``<out>.json``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from omniforcing.bench.report import Report, Table
from omniforcing.metrics import MetricSuite
from omniforcing.inference.export import load_model
from omniforcing.inference.streaming import generate_streaming_clips
from omniforcing.pipelines.omniforcing_results import EVAL_SEED, SCENE, Generate, reference_batches, teacher_clips
from omniforcing.types import ClipSpec


def contact_sheet(rows: list[Tensor], frame_stride: int, scale: int = 3) -> Image.Image:
    """Tile clips into one image: ``rows`` of ``(T, H, W, 3)`` uint8, every ``frame_stride``-th frame, upscaled."""
    strips = [np.concatenate(list(clip[::frame_stride].numpy()), axis=1) for clip in rows]
    sheet = np.concatenate(strips, axis=0)
    image = Image.fromarray(sheet)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def model_clips(path: str) -> tuple[Generate, str]:
    """Clip generation of any saved model: a causal student streams block by block, a teacher makes whole clips."""
    network, codec, config = load_model(path)
    if not network.causal:
        return teacher_clips(path, None)
    sampler = "few-step, streamed with the KV cache"
    return (lambda captions, seconds, seed: generate_streaming_clips(network, codec, config, captions, seconds,
                                                                     seed)), sampler


def slug(name: str) -> str:
    """File-name form of a display name."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@torch.no_grad()
def compare(teachers: dict[str, str], out: Path, clips: int = 8, seconds: int = 2, frame_stride: int = 6,
            seed: int = 0, threads: int | None = None, cache_dir: Path = Path("runs/metric_cache")) -> Report:
    """Generate with each model, write its contact sheet, and measure it.

    Args:
        teachers: display name -> checkpoint (``.ckpt`` or exported folder) of a teacher or a causal student.
        out: path prefix of the outputs (``<out>_<name>.png``, ``<out>.md``, ``<out>.json``).
        clips: prompts (held-out synthetic captions, seed ``EVAL_SEED``).
        seconds: clip length.
        frame_stride: frames between contact-sheet columns (6 = 4 per second at 24 fps).
        seed: noise seed.
        threads: torch CPU threads (``None``: torch's default).
        cache_dir: where the reference clips' statistics are cached.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clip = ClipSpec(seconds=seconds)
    batches, captions = reference_batches(clip, clips)
    real = torch.cat([b.video for b in batches]).permute(0, 1, 3, 4, 2)  # (N, T, H, W, 3) uint8
    suite = MetricSuite(["video_stats", "audio_stats", "sync"])
    suite.prepare_real_stats(batches, fps=clip.fps, sample_rate=clip.sample_rate, cache_dir=cache_dir,
                             description=f"synthetic seed {EVAL_SEED}, {clips} clips of {seconds} s, {SCENE}")
    table = Table(f"Generated clips ({clips} held-out prompts, {seconds}-s clips)",
                  ["model", "sampler", "FD video stats", "FD audio stats", "AV-Align", "event F1 (AV)",
                   "contact sheet"])
    for name, path in teachers.items():
        generate, sampler = model_clips(path)
        made = generate(captions, seconds, seed)
        suite.reset()
        suite.update(made.video.permute(0, 1, 4, 2, 3), made.audio[:, None], fps=clip.fps,
                     sample_rate=clip.sample_rate)
        values = suite.compute()
        rows = [row for pair in zip(real, made.video) for row in pair]  # real, generated, real, generated, ...
        sheet = out.parent / f"{out.name}_{slug(name)}.png"
        contact_sheet(rows, frame_stride).save(sheet)
        table.add(name, sampler, values.get("fd_video_stats", float("nan")),
                  values.get("fd_audio_stats", float("nan")), values.get("av_align", float("nan")),
                  values.get("event_f1_audio_visual", float("nan")), sheet.name)
    table.notes = ("Contact sheets: pairs of rows, the real clip of a prompt above the model's clip for it; one "
                   f"column every {frame_stride} frames. FD: weight-free statistics extractors (not FVD/FAD).")
    report = Report("codec_comparison", [table])
    out.with_suffix(".md").write_text(report.to_markdown())
    report.save_json(out.with_suffix(".json"))
    return report


def main() -> None:
    """Command line: ``python -m omniforcing.pipelines.codec_comparison --teachers '{...}' --out PREFIX``."""
    from jsonargparse import CLI

    print(CLI(compare, as_positional=False).to_markdown())


if __name__ == "__main__":
    main()
