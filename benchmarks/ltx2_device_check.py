"""Issue 13's device check: LTX-2 at its real widths, a few of its 48 blocks, streamed and trained on one GPU.

The backbone is :class:`~omniforcing.models.ltx2.LTX2Backbone` with LTX-2's real geometry (the defaults of
diffusers' ``LTX2VideoTransformer3DModel.__init__``: video 32 heads x 128, audio 32 heads x 64, 3840-wide caption
features, 128 + 128 latent channels; with LTX-2's split RoPE) but only ``--blocks`` of its 48 transformer blocks,
random weights, bf16, eager, 512x768 video (a 16x24 latent grid: 512/32 x 768/32), 16 audio sinks, the v1 prefix.
Two measurements per depth, then a straight-line fit over the depths (slope = cost of one transformer block, intercept = everything
outside the blocks) extrapolated to 48 blocks:

* **streaming**: the cached block step every causal student streams with
  (:class:`~omniforcing.sampling.blocks.BlockGenerator`: 4 few-step forwards + 1 commit forward of one 1-s
  macro-block, 3 video + 25 audio latents, no guidance) against a rolling KV cache whose ``--window`` is full
  (blocks ``window + 1 ..`` are timed). Budget: a 1-s block holds 24 frames (24 fps), so streaming at F frames/s
  leaves ``1000 * 24 / F`` ms per block: 1200 ms at OmniForcing's 20 FPS, 960 ms at its 25 FPS on one H200, i.e.
  25 ms / 20 ms per transformer block of 48 (before the VAE decode and everything outside the blocks).
* **Stage III memory**: one generator step of Self-Forcing DMD (:func:`omniforcing.methods.self_forcing.rollout`
  of a ``--clip-seconds`` clip with gradient through each block's exit forward, then
  :meth:`~omniforcing.methods.dmd.DistributionMatching.generator_loss` against a bidirectional teacher (CFG) and
  critic of the same depth, then backward), with the exit forwards activation-checkpointed (the recipes' setting)
  and without. Peak CUDA memory, the weights of the three models, and the generator's gradients are recorded.

Every step runs under its own time budget (``--step-budget``) and the whole run under ``--budget`` seconds; each
result is written to ``--out`` as soon as it exists, so a step that fails or runs out of time leaves the others.

    python benchmarks/ltx2_device_check.py --out $OUT/ltx2_device_check.json             # GPU: the check
    python benchmarks/ltx2_device_check.py --device cpu --blocks 1 --tiny --out x.json    # CPU smoke (tests)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import torch

from omniforcing.bench.timing import DeviceTimer
from omniforcing.methods.dmd import DistributionMatching
from omniforcing.methods.self_forcing import blocks_for_seconds, rollout
from omniforcing.models.ltx2 import BytePromptEncoder, LTX2Architecture, LTX2Backbone
from omniforcing.sampling.blocks import BlockGenerator
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES, BlockTimes

FULL_DEPTH = 48
"""Transformer blocks of LTX-2 (``num_layers`` of ``LTX2VideoTransformer3DModel``)."""
REAL = LTX2Architecture(num_layers=FULL_DEPTH, num_attention_heads=32, attention_head_dim=128,
                        audio_num_attention_heads=32, audio_attention_head_dim=64, in_channels=128,
                        audio_in_channels=128, caption_channels=3840, rope_type="split")
REAL_GRID = (512 // 32, 768 // 32)
"""Latent tokens per video frame at 512x768 (the video VAE's spatial factor is 32)."""
TINY = LTX2Architecture()
TINY_GRID = (2, 3)
FPS = 24
"""Video frames per second: a 1-s macro-block holds ``FPS`` frames."""
CLAIMED_FPS = (20, 25)
"""OmniForcing's streaming rates on one H200 (ALGORITHMS.md §6.5: ~25 FPS; 20 FPS)."""
AUDIO_SINKS = 16
TIMED_BLOCKS = 3
PROMPT = "a dog barks at a passing train"


class StepTimeout(Exception):
    """A step ran past its time budget."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (between Python operations)."""
    def expire(signum, frame):  # noqa: ARG001 - signal handler signature
        raise StepTimeout(f"over its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def build(architecture: LTX2Architecture, grid: tuple[int, int], device: torch.device, *, causal: bool,
          sinks: int) -> LTX2Backbone:
    """A random LTX-2 backbone in bf16 on ``device`` (built there directly: no host copy of the weights)."""
    with torch.device(device):
        network = LTX2Backbone(text_encoder=BytePromptEncoder(width=architecture.caption_channels),
                               video_grid=grid, architecture=architecture, dtype="bfloat16",
                               num_audio_sinks=sinks, causal=causal)
    return network.to(device)


def latent_shapes(network: LTX2Backbone) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(C, h, w)`` of one video latent and ``(C,)`` of one audio latent."""
    return (network.video_channels, *network.video_grid), (network.audio_channels,)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by ``tensors``."""
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.inference_mode()
def stream_block_ms(network: LTX2Backbone, window: int, device: torch.device) -> dict:
    """Milliseconds of each cached block step (4 steps + commit) of a stream whose window fills and rolls."""
    text = network.encode_text([PROMPT])
    cache = network.new_cache(1, window_seconds=float(window))
    video, audio = latent_shapes(network)
    blocks = BlockGenerator(GuidedDenoiser(network, text, cache=cache), BlockTimes.of(DEFAULT_FEW_STEP_TIMES),
                            video, audio)
    generator = torch.Generator().manual_seed(0)
    times = []
    for block in range(window + 1 + TIMED_BLOCKS):  # blocks > window run against a full window
        with DeviceTimer(device) as timer:
            blocks(block, generator)
        times.append(timer.ms)
    return {"block_ms": times, "full_window_block_ms": statistics.median(times[-TIMED_BLOCKS:]),
            "cache_bytes": cache.nbytes(), "cache_tokens": list(cache.num_tokens())}


def stage3_step(generator_net: LTX2Backbone, teacher: LTX2Backbone, critic: LTX2Backbone, clip_seconds: int,
                checkpoint_exit: bool, device: torch.device) -> dict:
    """Memory of one Stage III generator step: rollout (gradient through exit forwards), DMD loss, backward."""
    generator_net.zero_grad(set_to_none=True)
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if cuda else None
    video, audio = latent_shapes(generator_net)
    noise = torch.Generator().manual_seed(0)
    exit_step = len(DEFAULT_FEW_STEP_TIMES) - 1
    start = time.perf_counter()
    x = rollout(generator_net, generator_net.encode_text([PROMPT]), blocks_for_seconds(generator_net, clip_seconds),
                DEFAULT_FEW_STEP_TIMES, video_latent=video, audio_latent=audio, exit_step=exit_step,
                checkpoint_exit=checkpoint_exit, generator=noise)
    with torch.no_grad():
        text = teacher.encode_text([PROMPT])
        null_text = teacher.encode_text([PROMPT], drop=torch.ones(1, dtype=torch.bool, device=device))
        critic_text = critic.encode_text([PROMPT])
    objective = DistributionMatching(video_cfg=3.0, audio_cfg=5.0)
    losses = objective.generator_loss(x, objective.real_score(teacher, text, null_text),
                                      objective.fake_score(critic, critic_text), noise)
    losses["loss_dmd"].backward()
    if cuda:
        torch.cuda.synchronize(device)
    grads = [p.grad for p in generator_net.parameters() if p.grad is not None]
    result = {"seconds": time.perf_counter() - start, "loss_finite": bool(torch.isfinite(losses["loss_dmd"])),
              "video_latents": list(x.video.shape), "audio_latents": list(x.audio.shape),
              "grad_bytes": tensor_bytes(grads), "params_with_grad": len(grads)}
    if cuda:
        result |= {"weights_bytes": before, "peak_bytes": torch.cuda.max_memory_allocated(device),
                   "peak_above_weights_bytes": torch.cuda.max_memory_allocated(device) - before}
    generator_net.zero_grad(set_to_none=True)
    return result


def line_fit(points: dict[int, float]) -> dict:
    """Least-squares ``value = intercept + slope * depth`` over the measured depths, extrapolated to 48 blocks.

    One depth gives no intercept: the slope is ``value / depth``. ``upper_bound_at_48_blocks`` scales the deepest
    measurement proportionally (it counts the part outside the blocks 48 times over); ``at_48_blocks`` is
    ``None`` when the slope is not positive (noise larger than one block's cost: read the upper bound).
    """
    depths, values = list(points), list(points.values())
    if len(depths) == 1:
        slope, intercept = values[0] / depths[0], 0.0
    else:
        mean_d, mean_v = statistics.fmean(depths), statistics.fmean(values)
        slope = sum((d - mean_d) * (v - mean_v) for d, v in zip(depths, values)) / sum(
            (d - mean_d) ** 2 for d in depths)
        intercept = mean_v - slope * mean_d
    deepest = max(depths)
    return {"per_block": slope, "outside_blocks": intercept,
            "at_48_blocks": intercept + FULL_DEPTH * slope if slope > 0 else None,
            "upper_bound_at_48_blocks": points[deepest] / deepest * FULL_DEPTH,
            "measured": {str(d): v for d, v in points.items()}}


def derive(result: dict) -> None:
    """Per-transformer-block figures, extrapolated to 48 blocks, against the claimed streaming rates."""
    depths = result["depths"]
    stream = {int(d): r["stream"]["full_window_block_ms"] for d, r in depths.items() if r.get("stream")}
    if stream:
        fit = line_fit(stream)
        estimate = fit["at_48_blocks"] or fit["upper_bound_at_48_blocks"]
        fit["fps_at_48_blocks"] = FPS * 1e3 / estimate
        for fps in CLAIMED_FPS:
            budget = 1e3 * FPS / fps
            fit[f"budget_{fps}fps"] = {"block_ms": budget, "per_transformer_block_ms": budget / FULL_DEPTH,
                                      "within": estimate <= budget}
        result["stream_ms"] = fit
    for variant in ("stage3_checkpointed", "stage3_no_checkpoint"):
        for key in ("peak_bytes", "weights_bytes", "grad_bytes", "peak_above_weights_bytes"):
            points = {int(d): r[variant][key] for d, r in depths.items() if (r.get(variant) or {}).get(key) is not None}
            if points:
                result.setdefault(variant, {})[key] = line_fit(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cuda (the check); cpu only with --tiny, to smoke-test")
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4], help="depths measured (of LTX-2's 48)")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny CPU-test architecture, a 2x3 grid, a 2-s window and a 1-s rollout")
    parser.add_argument("--window", type=int, help="KV-cache window in seconds (default 10: the streaming default)")
    parser.add_argument("--clip-seconds", type=int,
                        help="Stage III rollout in seconds after the lead (default 5: OmniForcing's 121 frames)")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run")
    parser.add_argument("--step-budget", type=float, default=90.0, help="seconds for each step")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    device = torch.device(args.device)
    architecture, grid = (TINY, TINY_GRID) if args.tiny else (REAL, REAL_GRID)
    window = args.window or (2 if args.tiny else 10)
    clip_seconds = args.clip_seconds or (1 if args.tiny else 5)
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "dtype": "bfloat16", "full_depth": FULL_DEPTH,
                    "architecture": {k: v for k, v in asdict(architecture).items() if k != "num_layers"},
                    "video_grid": list(grid), "audio_sinks": AUDIO_SINKS, "window_seconds": window,
                    "clip_seconds": clip_seconds, "few_step_times": list(DEFAULT_FEW_STEP_TIMES),
                    "depths": {}, "errors": {}, "step_wall_s": {}}

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=1, default=str))

    def step(name: str, fn: Callable[[], object]) -> object:
        start, budget = time.perf_counter(), min(args.step_budget, deadline - time.monotonic())
        value = None
        try:
            if budget <= 0:
                raise StepTimeout("no time left in the run's budget")
            with time_limit(budget):
                value = fn()
        except Exception as error:  # noqa: BLE001 - recorded; the next step runs
            result["errors"][name] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
        result["step_wall_s"][name] = time.perf_counter() - start
        save()
        print(f"{name}: {result['step_wall_s'][name]:.1f} s", flush=True)
        return value

    save()
    for depth in args.blocks:
        entry = result["depths"].setdefault(str(depth), {})
        shaped = replace(architecture, num_layers=depth)
        student = step(f"{depth} blocks: build", lambda: build(shaped, grid, device, causal=True, sinks=AUDIO_SINKS))
        if student is None:
            continue
        entry["parameters"] = sum(p.numel() for p in student.parameters())
        entry["block_parameters"] = sum(p.numel() for p in student.transformer.transformer_blocks.parameters())
        entry["stream"] = step(f"{depth} blocks: stream", lambda: stream_block_ms(student, window, device))
        teacher = step(f"{depth} blocks: build teacher and critic", lambda: (
            build(shaped, grid, device, causal=False, sinks=0).requires_grad_(False),
            build(shaped, grid, device, causal=False, sinks=0).requires_grad_(False)))
        if teacher is not None:
            for variant, checkpointed in (("stage3_checkpointed", True), ("stage3_no_checkpoint", False)):
                entry[variant] = step(f"{depth} blocks: {variant}", lambda: stage3_step(
                    student, *teacher, clip_seconds, checkpointed, device))
        student = teacher = None  # free both before the next depth is built
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    derive(result)
    save()


if __name__ == "__main__":
    main()
