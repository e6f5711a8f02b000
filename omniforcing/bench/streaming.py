"""Streaming benchmark: a causal student streaming vs the bidirectional teacher, latency against stream position
(rolling window vs a cache that never evicts) and its flatness, time to first block, overlap, and FLOPs against
the measured peak (issue 12, item 4).

Everything is measured side by side in one run on the same machine. Both models have the same preset size and
video latent grid (``--preset``, ``--video-grid``) and random weights (timings do not depend on the weights);
the codec is the learned latent space's architecture (:class:`~omniforcing.codecs.CausalVideoAutoencoder` at
8x the grid in pixels + :class:`~omniforcing.codecs.MelAutoencoder`, random weights too). Each model is sampled
as it is used in practice: the teacher with 32 Euler steps and classifier-free guidance (2 forwards per step)
over the whole clip, the student with 4 few-step steps and no guidance plus one commit forward per 1-s block.
The student runs only through :class:`~omniforcing.inference.streaming.StreamingGenerator`'s public API
(``stream``, ``latent_blocks``, ``generate_latents``); :func:`student_settings` is the one place that turns
the bench's options into its settings.

The backbones run in the dtype whose matmul peak measures fastest on the device (bf16 on GPUs and AMX CPUs,
fp32 on AVX2-only CPUs, where bf16 is emulated); the codec decodes in fp32. Every timed function runs once
untimed first; GPU regions are timed with CUDA events (:mod:`omniforcing.bench.timing`). Each table is one
:meth:`~omniforcing.bench.report.Report.measure` call: a table that raises is recorded with its error and the
next one runs.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch

from omniforcing.bench.flops import PEAK_DTYPES, ModelDtype, count_flops, fastest_dtype, measure_peaks
from omniforcing.bench.report import Report, Table, TableMeasurement
from omniforcing.bench.timing import DeviceTimer, warm_up
from omniforcing.codecs import AVCodec, CausalVideoAutoencoder, MelAudioCodec, MelAutoencoder
from omniforcing.inference.bidirectional import generate_bidirectional
from omniforcing.inference.clips import decode_latents, latent_noise
from omniforcing.inference.stream_settings import StreamingSettings
from omniforcing.inference.streaming import StreamedBlock, StreamingGenerator
from omniforcing.models.presets import build_preset
from omniforcing.sampling.capture import compile_mode
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES

log = logging.getLogger(__name__)

PROMPT = "a red ball bounces"
TEACHER_STEPS, TEACHER_CFG = 32, 3.0
STUDENT_TIMES = DEFAULT_FEW_STEP_TIMES
FLATNESS_BLOCKS = 10
"""Blocks in each median of the latency flatness (single blocks are noisy on a shared machine)."""
DEFAULT_VIDEO_GRID = (4, 4)
"""Latent tokens per video frame of the shipped learned codec (32x32 frames, spatial factor 8)."""


@dataclass(frozen=True)
class StreamingBenchConfig:
    """Sizes of one run; ``quick`` is a smoke run for tests (tiny preset, short streams, small codec).

    Args:
        preset: model preset of the student and the teacher (:data:`omniforcing.models.presets.PRESETS`).
        video_grid: ``(h, w)`` latent tokens per video frame; the codec's frames are ``(8 h, 8 w)`` pixels
            (``(4 h, 4 w)`` in a quick run).
        clip_seconds: clip length of the student vs teacher comparison.
        stream_seconds: length of the two latency streams (rolling window, never evicting).
        window: KV-cache window in seconds.
        positions: stream positions (s) the latency table shows.
        overlap_blocks: blocks per run of the overlap table.
        repeats: alternating runs per model (each keeps its fastest).
        rounds: latency streams run one after another (each block keeps its fastest).
        quick: tiny sizes (numbers mean little).
        compile: run the student's block steps captured (:attr:`StreamingSettings.compile`; ``None``: the
            engine's default, captured on CUDA and eager elsewhere).
    """

    preset: str
    video_grid: tuple[int, int]
    clip_seconds: int
    stream_seconds: int
    window: float
    positions: tuple[int, ...]
    overlap_blocks: int
    repeats: int
    rounds: int
    quick: bool
    compile: bool | None = None

    @classmethod
    def make(cls, quick: bool, preset: str | None = None, video_grid: tuple[int, int] | None = None,
             compile: bool | None = None) -> StreamingBenchConfig:
        grid = tuple(video_grid or DEFAULT_VIDEO_GRID)
        if quick:
            return cls(preset or "tiny", grid, 1, 12, 2.0, (1, 2, 4, 8, 12), 3, 1, 1, True, compile)
        return cls(preset or "small", grid, 10, 120, 10.0, (1, 2, 5, 10, 12, 20, 30, 60, 90, 120), 12, 2, 2, False,
                   compile)

    @property
    def steady_block(self) -> int:
        """First block generated against a full window that has already evicted (v1 layout: block p holds
        second p)."""
        return math.ceil(self.window) + 2

    @property
    def flatness_spans(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Blocks (first, last) compared by the latency flatness: the first ``FLATNESS_BLOCKS`` blocks once the
        window is full and evicting, and the last ``FLATNESS_BLOCKS`` of the stream."""
        first = self.steady_block
        return (first, first + FLATNESS_BLOCKS - 1), (self.stream_seconds - FLATNESS_BLOCKS + 1, self.stream_seconds)

    @property
    def grid_label(self) -> str:
        """``"16x24"``."""
        return f"{self.video_grid[0]}x{self.video_grid[1]}"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def bench_codec(config: StreamingBenchConfig) -> AVCodec:
    """The learned codec's architecture at the configured latent grid (random weights, float32, eval mode).

    A quick run uses a smaller one with the same latent shapes (spatial factor 4, 2 Griffin-Lim iterations),
    which keeps the smoke test fast.
    """
    h, w = config.video_grid
    if config.quick:
        video = CausalVideoAutoencoder(size=(4 * h, 4 * w), spatial_factor=4, widths=(8, 8), group_width=16)
        return AVCodec(video, MelAutoencoder(MelAudioCodec(griffin_lim_iters=2, nnls_iters=2), hidden_channels=32))
    return AVCodec(CausalVideoAutoencoder(size=(8 * h, 8 * w)), MelAutoencoder())


def bench_models(config: StreamingBenchConfig, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.nn.Module, AVCodec]:
    """(causal student with 16 sinks, bidirectional teacher, codec): the configured preset and latent grid,
    random weights, eval mode; the backbones cast to ``dtype``, the codec in float32."""
    torch.manual_seed(0)
    student = build_preset(config.preset, causal=True, num_audio_sinks=16, video_grid=config.video_grid)
    teacher = build_preset(config.preset, causal=False, video_grid=config.video_grid)
    codec = bench_codec(config)
    return student.to(device, dtype).eval(), teacher.to(device, dtype).eval(), codec.to(device).eval()


def student_settings(config: StreamingBenchConfig, **overrides: Any) -> StreamingSettings:
    """How every table samples the student: its 4 few-step times, no guidance, the configured window and
    compile option; ``overrides`` are further :class:`StreamingSettings` fields. The one place that turns the
    bench's options into streaming settings."""
    return StreamingSettings(video_times=STUDENT_TIMES, **{"window_seconds": config.window, "compile": config.compile,
                                                          **overrides})


@dataclass
class TeacherRun:
    """Seconds spent by the teacher on one clip: generation and decoding (its first frame is ready at the end)."""

    generate: float
    decode: float


def run_teacher(teacher: torch.nn.Module, codec: AVCodec, seconds: int, device: torch.device) -> TeacherRun:
    """Generate and decode one clip with the teacher (32 Euler steps, CFG 3 on both modalities)."""
    noise = latent_noise(codec, seconds, 1, generator=torch.Generator().manual_seed(0), device=device)
    with torch.inference_mode():
        with DeviceTimer(device) as generation:
            latents = generate_bidirectional(teacher, [PROMPT], noise, steps=TEACHER_STEPS,
                                             video_scale=TEACHER_CFG, audio_scale=TEACHER_CFG)
        with DeviceTimer(device) as decoding:
            decode_latents(codec, latents, [PROMPT])
    return TeacherRun(generation.ms / 1e3, decoding.ms / 1e3)


@dataclass
class StudentRun:
    """One stream's blocks (media dropped to keep memory flat) and the video frames it decoded."""

    blocks: list[StreamedBlock]
    frames: int


def run_student(generator: StreamingGenerator, seconds: int) -> StudentRun:
    """Stream ``seconds`` and keep every block's timings."""
    blocks, frames = [], 0
    for block in generator.stream(PROMPT, seconds):
        frames += 0 if block.video is None else block.video.shape[0]
        block.video = block.audio = None
        blocks.append(block)
    return StudentRun(blocks, frames)


def teacher_table(student, teacher, codec, config: StreamingBenchConfig, device) -> tuple[Table, dict]:
    """(a) and (c): the same clip from the teacher and from the streaming student, side by side.

    The two runs alternate ``config.repeats`` times and each model keeps its fastest run, so a burst of load
    from other processes does not land on one model only.
    """
    seconds = config.clip_seconds
    teacher_runs, student_runs = [], []
    for _ in range(config.repeats):
        teacher_runs.append(run_teacher(teacher, codec, seconds, device))
        student_runs.append(run_student(StreamingGenerator(student, codec, student_settings(config)), seconds))
    teacher_run = min(teacher_runs, key=lambda r: r.generate + r.decode)
    student_run = min(student_runs, key=lambda r: r.blocks[-1].ready_seconds)
    blocks = student_run.blocks
    generate = sum(b.generate_ms for b in blocks) / 1e3
    decode = sum(b.decode_ms for b in blocks) / 1e3
    teacher_total, student_total = teacher_run.generate + teacher_run.decode, blocks[-1].ready_seconds
    table = Table(f"Student streaming vs bidirectional teacher ({config.preset} preset, {config.grid_label} video "
                  f"grid, {seconds}-s clip + lead)",
                  ["model", "sampling", "backbone forwards", "generate (s)", "decode (s)", "total (s)",
                   "first media ready (s)", "real-time factor", "video FPS with audio"])
    media = seconds + 1 / codec.video.fps
    step = "compiled" if StreamingGenerator(student, codec, student_settings(config)).compiled else "eager"
    # the teacher runs compiled exactly when the student does (run_streaming_bench)
    table.add("teacher (bidirectional)", f"{TEACHER_STEPS} Euler steps, CFG {TEACHER_CFG:g}, {step}", 2 * TEACHER_STEPS,
              teacher_run.generate, teacher_run.decode, teacher_total, teacher_total, teacher_total / media,
              student_run.frames / teacher_total)
    table.add("student (causal, streaming)", f"4 few-step steps + commit per block, no CFG, {step}", 5 * len(blocks),
              generate, decode, student_total, blocks[0].ready_seconds, student_total / media,
              student_run.frames / student_total)
    table.notes = ("Teacher forwards run over the whole clip; student forwards over one 1-s block against its KV "
                   "cache. first media ready = time to first block for the student (block 0: lead frame + lead "
                   "audio latent), the whole generation for the teacher. real-time factor = wall time / media "
                   "time (< 1 is faster than real time). video FPS with audio = decoded video frames (with their "
                   f"audio) per second of wall time. Best of {config.repeats} alternating run(s) per model; "
                   "decoding on the same thread (no overlap).")
    summary = {"speedup_vs_teacher": teacher_total / student_total,
               "speedup_vs_teacher_generation_only": teacher_run.generate / generate,
               "time_to_first_block_s": blocks[0].ready_seconds,
               "time_to_first_second_s": blocks[1].ready_seconds,
               "real_time_factor_student": student_total / media,
               "video_fps_with_audio": student_run.frames / student_total,
               "teacher_seconds": teacher_total, "teacher_generate_seconds": teacher_run.generate,
               "student_seconds": student_total}
    return table, summary


def _median(values: list[float], first: int, last: int) -> float:
    """Median of ``values[first..last]`` (inclusive, clipped to the list; single block timings are noisy)."""
    return statistics.median(values[max(0, first):last + 1])


def stream_block_times(engines: list[StreamingGenerator], seconds: int, device: torch.device,
                       rounds: int) -> tuple[list[list[float]], list[list[int]]]:
    """Per-block milliseconds (the fastest of ``rounds`` streams) and cache bytes of a ``seconds`` stream per
    engine. Within a round the engines' streams alternate block by block; the rounds run one after another, so
    a burst of load from other processes lands on different blocks in each. Compiled engines first stream one
    untimed round (every block shape of a stream compiles once). Only the public streaming API is used: each
    block is timed around ``next()`` on its ``latent_blocks`` iterator (CUDA events on a GPU)."""
    blocks = engines[0].num_blocks(seconds)
    times = [[float("inf")] * blocks for _ in engines]
    sizes: list[list[int]] = [[] for _ in engines]
    for engine in (e for e in engines if e.compiled):
        warm_up(lambda: list(engine.latent_blocks(PROMPT, seconds)), device)
    for _ in range(rounds):
        streams = [engine.latent_blocks(PROMPT, seconds) for engine in engines]
        sizes = [[] for _ in engines]
        for index in range(blocks):
            for stream, block_times, block_sizes in zip(streams, times, sizes):
                with DeviceTimer(device) as timer:
                    block = next(stream)
                block_times[index] = min(block_times[index], timer.ms)
                block_sizes.append(block.cache_bytes)
    return times, sizes


def latency_table(student, codec, config: StreamingBenchConfig, device: torch.device) -> tuple[Table, dict]:
    """(b): per-block latency against stream position, rolling window vs never evicting, and the latency
    flatness (late blocks over early blocks once the window is full)."""
    engines = [StreamingGenerator(student, codec, student_settings(config, window_seconds=window, decode=False))
               for window in (config.window, None)]
    (window, growing), (window_bytes, growing_bytes) = stream_block_times(engines, config.stream_seconds, device,
                                                                          config.rounds)
    dtype = dtype_name(student.dtype)
    table = Table(f"Per-block latency vs stream position ({config.preset} preset, {config.grid_label} video grid, "
                  f"{dtype})",
                  ["stream position (s)", f"block, {config.window:g}-s window (ms)", "block, never evicts (ms)",
                   "ratio", "KV cache, window (MiB)", "KV cache, never evicts (MiB)"])
    for position in config.positions:  # v1 layout: block p holds second p of the stream
        rolling, never = (_median(t, position - 2, position + 2) for t in (window, growing))
        table.add(position, rolling, never, never / rolling, window_bytes[position] / 2**20,
                  growing_bytes[position] / 2**20)
    early, late = config.flatness_spans
    table.notes = (f"block = 4 denoising forwards + 1 commit forward of the 1-s block at that position: the fastest "
                   f"of {config.rounds} stream(s) run one after another, then the median of the 5 blocks around the "
                   "position; within a stream the two caches alternate block by block. latency flatness = median "
                   f"of blocks {late[0]}-{late[1]} over the median of blocks {early[0]}-{early[1]} (the window full "
                   "and evicting). Decoding (constant per block) is in the first table. Batch 1, 16 audio sinks, v1 "
                   "prefix. KV cache = bytes its key/value storage holds after the block (LatentBlock.cache_bytes; "
                   "for preallocated buffers, their capacity).")
    summary = {"block_latency_ms": _median(window, early[0], late[1]),
               "latency_flatness": _median(window, *late) / _median(window, *early),
               "latency_flatness_never_evicts": _median(growing, *late) / _median(growing, *early),
               f"block_ms_at_{late[1]}s_window": _median(window, *late),
               f"block_ms_at_{late[1]}s_never_evicts": _median(growing, *late),
               "kv_cache_mib_window": window_bytes[-1] / 2**20,
               "kv_cache_mib_never_evicts_at_end": growing_bytes[-1] / 2**20}
    return table, summary


def overlap_table(student, codec, config: StreamingBenchConfig) -> tuple[Table, dict]:
    """Whether generating on a background thread while the caller decodes pays on this machine."""
    table = Table("Overlap of generation and decoding", ["mode", "torch threads", "wall per block (ms)",
                                                         "generate (ms)", "decode (ms)"])
    runs: dict[bool, list[list[StreamedBlock]]] = {False: [], True: []}
    for _ in range(config.repeats):  # alternate the modes; each keeps its fastest run
        for overlap in (False, True):
            settings = student_settings(config, overlap=overlap)
            runs[overlap].append(run_student(StreamingGenerator(student, codec, settings),
                                             config.overlap_blocks).blocks)
    rates = {}
    for overlap, attempts in runs.items():
        blocks = min(attempts, key=lambda b: b[-1].ready_seconds - b[1].ready_seconds)
        rates[overlap] = statistics.median(b.ready_seconds - a.ready_seconds for a, b in zip(blocks[1:], blocks[2:]))
        table.add("background generation thread" if overlap else "sequential", torch.get_num_threads(),
                  rates[overlap] * 1e3, statistics.median(b.generate_ms for b in blocks[1:]),
                  statistics.median(b.decode_ms for b in blocks[1:]))
    table.notes = (f"Median wall time between consecutive blocks over {config.overlap_blocks} blocks, best of "
                   f"{config.repeats} alternating run(s) per mode. With overlap the next block is generated on a "
                   "second Python thread while this one is decoded; PyTorch releases the GIL inside kernels, so "
                   "it pays only when a core is free.")
    return table, {"overlap_speedup": rates[False] / rates[True]}


def measured(summary: dict[str, Any], key: str, table: str) -> float:
    """``summary[key]``, which an earlier table measured; a clear error if that table failed."""
    if key not in summary:
        raise RuntimeError(f"needs {key} from the {table} table, which did not complete")
    return summary[key]


def eager_copy(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` that runs eager even after a captured stream compiled it: FLOPs are counted from the
    operations dispatched, and a replayed CUDA graph dispatches none (the math, hence the count, is the same)."""
    copy = deepcopy(network)
    copy.compile_core(False)
    return copy


def flops_table(student, teacher, codec, config: StreamingBenchConfig, peaks: dict[torch.dtype, tuple[float, int]],
                device: torch.device, timings: dict[str, Any]) -> tuple[Table, dict]:
    """(f): counted FLOPs per generated second, and the utilisation against the measured matmul peak of the dtype
    the models run in. ``timings`` holds the earlier tables' ``block_latency_ms`` (window full) and
    ``teacher_generate_seconds``."""
    block_ms = measured(timings, "block_latency_ms", "latency")
    teacher_seconds = measured(timings, "teacher_generate_seconds", "student vs teacher")
    generator = StreamingGenerator(eager_copy(student), codec, student_settings(config, decode=False, compile=False))
    blocks = generator.latent_blocks(PROMPT)
    for _ in range(config.steady_block):  # fill the window: steady state
        next(blocks)
    student_flops = count_flops(lambda: next(blocks))
    noise, eager_teacher = latent_noise(codec, config.clip_seconds, 1, device=device), eager_copy(teacher)
    with torch.inference_mode():
        teacher_flops = count_flops(lambda: generate_bidirectional(eager_teacher, [PROMPT], noise, steps=1,
                                                                   video_scale=TEACHER_CFG, audio_scale=TEACHER_CFG))
        latents = generator.generate_latents(PROMPT, 1)
        decode_flops = count_flops(lambda: decode_latents(codec, latents.map(lambda m: m[:, 1:]), [PROMPT]))
    dtype = student.dtype
    peak = peaks[dtype][0] * 1e12
    teacher_per_second = teacher_flops * TEACHER_STEPS / config.clip_seconds
    teacher_rate = teacher_flops * TEACHER_STEPS / teacher_seconds
    student_rate = student_flops / (block_ms / 1e3)
    table = Table(f"Model FLOPs per generated second and utilisation ({config.preset} preset, {config.grid_label} "
                  f"video grid, {dtype_name(dtype)})",
                  ["what", "GFLOP per generated second", "achieved GFLOP/s", "utilisation"])
    table.add("student backbone (4 steps + commit, window full)", student_flops / 1e9, student_rate / 1e9,
              student_rate / peak)
    table.add(f"teacher backbone ({TEACHER_STEPS} steps x CFG)", teacher_per_second / 1e9, teacher_rate / 1e9,
              teacher_rate / peak)
    table.add("codec decode (learned video AE + mel AE; Griffin-Lim FFTs not counted)", decode_flops / 1e9, "", "")
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    for kind, (tflops, size) in peaks.items():
        table.add(f"measured {dtype_name(kind)} matmul peak ({size}x{size}, {threads})", "", tflops * 1e3, "")
    table.notes = ("FLOPs counted with torch.utils.flop_counter.FlopCounterMode (matmuls, linear, convolutions) plus "
                   "the dense attention formula for CPU scaled_dot_product_attention, which it does not count. "
                   f"Utilisation = achieved FLOP/s over the measured {dtype_name(dtype)} matmul peak, the dtype "
                   "with the faster peak on this device, in which the backbones ran: the student's over its "
                   "per-block latency with the window full, the teacher's (CFG branch included) over its "
                   "generation time in the first table. Text encoding is counted in neither.")
    summary = {"flops_per_generated_second_student": student_flops,
               "flops_per_generated_second_teacher": teacher_per_second,
               "matmul_peak_tflops_float32": peaks[torch.float32][0],
               "matmul_peak_tflops_bfloat16": peaks[torch.bfloat16][0],
               "utilisation_student": student_rate / peak, "utilisation_teacher": teacher_rate / peak}
    return table, summary


def dtype_table(student, codec, config: StreamingBenchConfig, device: torch.device) -> tuple[Table, dict]:
    """The student's block time in each dtype of the peak measurement (bf16 pays only with bf16 matrix units)."""
    table = Table("Student block time by dtype", ["dtype", "generate per block (ms)"])
    chosen = student.dtype
    times = {}
    try:
        for dtype in PEAK_DTYPES:
            student.to(dtype)
            generator = StreamingGenerator(student, codec, student_settings(config, decode=False))
            warm_up(lambda: run_student(generator, 3), device)  # compiled steps recompile for the new dtype
            blocks = run_student(generator, 3).blocks
            times[dtype] = statistics.median(b.generate_ms for b in blocks[1:])
            table.add(dtype_name(dtype), times[dtype])
    finally:
        student.to(chosen)
    table.notes = ("Median over blocks 1-3 of a fresh stream (window not yet full), after an untimed stream of the "
                   "same blocks. "
                   f"The other tables ran in {dtype_name(chosen)}.")
    return table, {"bf16_over_fp32_block_time": times[torch.bfloat16] / times[torch.float32]}


def warm_up_models(student, teacher, codec, config: StreamingBenchConfig, device: torch.device) -> None:
    """Untimed teacher steps on the compared clip and an untimed student stream of the same length, decoded:
    first-call costs, kernel selection and any compilation (the student's per block shape, every block of the
    clip having its own cache length until the window is full; the teacher's, whose automatic dynamic shapes
    recompile once on the second call) stay out of the tables."""
    noise = latent_noise(codec, config.clip_seconds, 1, device=device)
    with torch.inference_mode():
        warm_up(lambda: generate_bidirectional(teacher, [PROMPT], noise, steps=3, video_scale=TEACHER_CFG,
                                               audio_scale=TEACHER_CFG), device)
    warm_up(lambda: run_student(StreamingGenerator(student, codec, student_settings(config)), config.clip_seconds),
            device)


def run_streaming_bench(quick: bool = False, threads: int | None = 1, preset: str | None = None,
                        video_grid: tuple[int, int] | None = None, dtype: ModelDtype = "auto",
                        compile: bool | None = None, on_table: Callable[[Report], None] | None = None) -> Report:
    """Run the streaming suite (module docstring); returns a :class:`Report` whose summary carries
    ``speedup_vs_teacher``, ``block_latency_ms``, ``time_to_first_block_s``, ``real_time_factor_student``,
    ``video_fps_with_audio``, ``latency_flatness``, ``utilisation_student`` and ``utilisation_teacher``.

    Args:
        quick: tiny preset, small codec, 1-s clip, 12-s streams (a smoke run for tests; numbers mean little).
        threads: torch CPU threads (``None`` keeps the current setting); one thread gives stable numbers on a
            shared CPU and leaves a core for the overlap thread.
        preset: model preset (default ``small``; ``tiny`` when ``quick``).
        video_grid: ``(h, w)`` latent tokens per video frame (default 4x4, the shipped codec's).
        dtype: the backbones' dtype; ``auto`` = the one whose measured matmul peak is higher on this device.
        compile: run the student's block steps captured (``None``: on CUDA, eager elsewhere; see
            :class:`StreamingBenchConfig`).
        on_table: called with the report after every table (see :meth:`Report.measure`); a table that raises
            is recorded with its error and the next one runs.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = StreamingBenchConfig.make(quick, preset, video_grid, compile)
    peaks = measure_peaks(device, max_size=512 if config.quick else (8192 if device.type == "cuda" else 4096))
    dtype = fastest_dtype(peaks) if dtype == "auto" else getattr(torch, dtype)
    log.info("matmul peaks %s; models run in %s", {dtype_name(k): v for k, v in peaks.items()}, dtype_name(dtype))
    student, teacher, codec = bench_models(config, device, dtype)
    compiled = StreamingGenerator(student, codec, student_settings(config)).compiled
    if compiled:  # the speed-up compares like with like: the teacher's whole-clip forwards compiled too
        teacher.compile_core(True, mode=compile_mode(device))
    warm_up_models(student, teacher, codec, config, device)
    report = Report("streaming", on_table=on_table)
    report.summary.update(dtype=dtype_name(dtype), preset=config.preset, video_grid=config.grid_label,
                          device=device.type, compiled=compiled)
    tables: tuple[tuple[str, TableMeasurement], ...] = (
        ("Student streaming vs bidirectional teacher", lambda: teacher_table(student, teacher, codec, config, device)),
        ("Per-block latency vs stream position", lambda: latency_table(student, codec, config, device)),
        ("Overlap of generation and decoding", lambda: overlap_table(student, codec, config)),
        ("Model FLOPs per generated second and utilisation",
         lambda: flops_table(student, teacher, codec, config, peaks, device, report.summary)),
        ("Student block time by dtype", lambda: dtype_table(student, codec, config, device)),
    )
    for title, measurement in tables:
        log.info("streaming bench: %s", title)
        report.measure(title, measurement)
    return report


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    print(run_streaming_bench(quick="--quick" in sys.argv).to_markdown())
