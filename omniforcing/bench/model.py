"""Backbone speed: per-block decode latency against stream position (rolling window vs a cache that never
evicts) and throughput of the full masked forward, in float32 and bfloat16.

Run ``python -m omniforcing.bench.model`` (``--quick`` for the tiny preset and a short stream). A decoded
block is what a few-step streaming sampler does per 1-s macro-block: ``steps`` non-committing forwards on the
block's noisy latents plus one committing forward (the clean-context refresh).
"""

from __future__ import annotations

import functools
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from omniforcing.bench.report import Report, Table
from omniforcing.bench.timing import DeviceTimer, synchronize
from omniforcing.models.presets import PRESETS, build_preset, parameter_counts
from omniforcing.models.transformer import DualStreamTransformer

log = logging.getLogger(__name__)

POSITIONS = (1, 2, 5, 10, 20, 30, 45, 60)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn`` takes on ``device`` (CUDA events on a GPU, after the work queued before it)."""
    synchronize(device)
    with DeviceTimer(device) as timer:
        fn()
    return timer.ms / 1e3


@dataclass
class DecodeTiming:
    """Timings of one stream decode.

    Args:
        block_seconds: wall time of every block (``steps`` non-committing forwards + one committing forward).
        forward_seconds: at each probed block, the best time of one non-committing forward over ``rounds``
            rounds that revisit every probe in turn (cache snapshots), so bursts of load from other processes
            on a shared CPU do not land on one position.
        tokens: cached (video, audio) tokens per layer and kind at the end.
    """

    block_seconds: list[float]
    forward_seconds: dict[int, float]
    tokens: tuple[int, int]


@torch.inference_mode()
def decode_timing(model: DualStreamTransformer, seconds: int, window: float | None, steps: int, dtype: torch.dtype,
                  probes: tuple[int, ...], rounds: int = 7) -> DecodeTiming:
    """Decode a ``seconds``-long stream block by block and time it (see :class:`DecodeTiming`)."""
    device = model.device
    layout = model.layout(1 + 3 * seconds)
    text = model.encode_text(["a ball bounces off the floor"])
    cache = model.new_cache(1, window_seconds=window)
    h, w = model.video_grid
    timing = DecodeTiming([], {}, (0, 0))
    saved = {}
    for block in range(layout.num_blocks):
        vs, as_ = layout.block_slices(block)
        video = torch.randn(1, vs.stop - vs.start, model.video_channels, h, w, device=device, dtype=dtype)
        audio = torch.randn(1, as_.stop - as_.start, model.audio_channels, device=device, dtype=dtype)
        inputs = (video, audio, torch.ones(1, video.shape[1], device=device),
                  torch.ones(1, audio.shape[1], device=device), text)

        def decode_block() -> None:
            for _ in range(steps):
                model(*inputs, cache=cache, block=block)
            model(video, audio, inputs[2] * 0, inputs[3] * 0, text, cache=cache, block=block, commit=True)

        if block in probes:
            saved[block] = (cache.snapshot(copy=True), inputs)
        timing.block_seconds.append(_timed(decode_block, device))
    timing.tokens = cache.num_tokens()
    for _ in range(rounds):
        for block, (state, inputs) in saved.items():
            cache.restore(state)
            elapsed = _timed(functools.partial(model, *inputs, cache=cache, block=block), device)
            timing.forward_seconds[block] = min(elapsed, timing.forward_seconds.get(block, float("inf")))
    return timing


@torch.inference_mode()
def full_forward_seconds(model: DualStreamTransformer, seconds: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """Median time of one block-causal forward over a whole clip of ``seconds``."""
    device = model.device
    layout = model.layout(1 + 3 * seconds)
    h, w = model.video_grid
    video = torch.randn(1, layout.num_video, model.video_channels, h, w, device=device, dtype=dtype)
    audio = torch.randn(1, layout.num_audio, model.audio_channels, device=device, dtype=dtype)
    t_video = torch.rand(1, layout.num_video, device=device)
    t_audio = torch.rand(1, layout.num_audio, device=device)
    text = model.encode_text(["a ball bounces off the floor"])
    model(video, audio, t_video, t_audio, text, causal=True)  # warm-up (mask construction, allocator)
    return statistics.median(_timed(lambda: model(video, audio, t_video, t_audio, text, causal=True), device)
                             for _ in range(repeats))


def parameter_count_table() -> Table:
    """Parameter counts of every preset, as a benchmark table."""
    table = Table("Model presets (parameters)", ["preset", "widths v/a", "depth", "heads v/a", "video", "audio",
                                                 "cross-modal", "text", "total"])
    for name, kwargs in PRESETS.items():
        counts = parameter_counts(name)
        groups = (f"{counts[k] / 1e6:.2f}M" for k in ("video", "audio", "cross-modal", "text", "total"))
        table.add(name, f"{kwargs['video_width']}/{kwargs['audio_width']}", kwargs["depth"],
                  f"{kwargs['video_heads']}/{kwargs['audio_heads']}", *groups)
    return table


def _decode_table(model: DualStreamTransformer, dtype: torch.dtype, seconds: int, window: float, steps: int,
                  positions: tuple[int, ...], label: str) -> tuple[Table, dict[str, float]]:
    rolling = decode_timing(model, seconds, window, steps, dtype, positions)
    growing = decode_timing(model, seconds, None, steps, dtype, positions)
    table = Table(f"Per-block decode latency vs stream position ({label})",
                  ["stream position (s)", f"forward, {window:g} s window (ms)", "forward, never evicts (ms)",
                   "ratio", f"block, {window:g} s window (ms)", "block, never evicts (ms)"])
    for pos in positions:
        a, b = rolling.forward_seconds[pos], growing.forward_seconds[pos]
        table.add(pos, a * 1e3, b * 1e3, b / a, rolling.block_seconds[pos] * 1e3, growing.block_seconds[pos] * 1e3)
    table.notes = (f"forward = one non-committing forward of the 1-s block at that position (best of 7 interleaved "
                   f"rounds over cache snapshots); block = "
                   f"{steps} such forwards + 1 committing forward, timed once (noisier). Batch 1. Cached tokens per "
                   f"layer and kind at the end (video, audio): window {rolling.tokens}, never evicts "
                   f"{growing.tokens}.")
    first = positions.index(5) if 5 in positions else 0
    summary = {f"forward_ms_at_{positions[-1]}s_window_{label}": table.rows[-1][1],
               f"forward_ms_at_{positions[-1]}s_never_evicts_{label}": table.rows[-1][2],
               f"latency_flatness_window_{label}": table.rows[-1][1] / table.rows[first][1]}
    return table, summary


def _throughput_table(model: DualStreamTransformer, preset: str, clips: tuple[int, ...],
                      device: torch.device) -> tuple[Table, dict[str, float]]:
    table = Table(f"Full block-causal forward ({preset} preset, {_grid(model)} video grid, batch 1)",
                  ["dtype", "clip (s)", "tokens", "ms per forward", "tokens/s"])
    h, w = model.video_grid
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        for clip in clips:
            layout = model.layout(1 + 3 * clip)
            tokens = layout.num_video * h * w + layout.num_audio + 16
            elapsed = full_forward_seconds(model, clip, dtype)
            table.add(str(dtype).removeprefix("torch."), clip, tokens, elapsed * 1e3, tokens / elapsed)
    return table, {"full_forward_tokens_per_s_float32": max(r[4] for r in table.rows if r[0] == "float32")}


def _grid(model: DualStreamTransformer) -> str:
    return "x".join(str(n) for n in model.video_grid)


def run_model_bench(quick: bool = False, threads: int | None = 1, preset: str | None = None,
                    video_grid: tuple[int, int] | None = None,
                    on_table: Callable[[Report], None] | None = None) -> Report:
    """Measure the backbone; returns a :class:`Report` (print ``report.to_markdown()``).

    Args:
        quick: tiny preset, 6-s stream, short clips (for tests); otherwise the ``small`` preset to 60 s.
        threads: CPU threads for torch (``None`` keeps the current setting). The default of one thread gives
            stable numbers on shared CPUs, where OpenMP threads spinning on busy cores made timings 10-40x
            worse in our measurements.
        preset: model preset (default ``small``, ``tiny`` when ``quick``).
        video_grid: ``(h, w)`` latent tokens per video frame (default: the presets' 4x4).
        on_table: called with the report after every table (see :meth:`Report.measure`); a table that raises
            is recorded with its error and the next one runs.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default, seconds, window, steps = ("tiny", 6, 2.0, 2) if quick else ("small", 60, 10.0, 4)
    preset = preset or default
    positions = tuple(p for p in POSITIONS if p <= seconds) if not quick else (1, 2, 5, 6)
    report = Report("model", on_table=on_table)
    report.measure("Model presets (parameters)", lambda: (parameter_count_table(), {}))
    grid = {} if video_grid is None else {"video_grid": tuple(video_grid)}
    model = build_preset(preset, num_audio_sinks=16, causal=True, **grid).to(device).eval()
    for dtype in (torch.float32, torch.bfloat16):
        label = f"{preset}, {_grid(model)}, {str(dtype).removeprefix('torch.')}, {device.type}"
        log.info("decode latency: %s", label)
        report.measure(f"Per-block decode latency vs stream position ({label})",
                       lambda: _decode_table(model.to(dtype), dtype, seconds, window, steps, positions, label))
    report.measure("Full block-causal forward",
                   lambda: _throughput_table(model, preset, (1, 2) if quick else (2, 5, 10, 20), device))
    return report


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    print(run_model_bench(quick="--quick" in sys.argv).to_markdown())
