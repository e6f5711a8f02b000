"""Streaming benchmark: a causal student streaming vs the bidirectional teacher, latency against stream position
(rolling window vs a cache that never evicts), time to first block, overlap, and FLOPs against the measured peak.

Everything is measured side by side in one run on the same machine. Both models have the same preset size
and random weights (timings do not depend on the weights); the codec is the learned latent space's
architecture (:class:`~omniforcing.codecs.CausalVideoAutoencoder` + :class:`~omniforcing.codecs.MelAutoencoder`,
random weights too). Each model is sampled as it is used in practice: the teacher with 32 Euler steps and
classifier-free guidance (2 forwards per step) over the whole clip, the student with 4 few-step steps and no
guidance plus one commit forward per 1-s block.

The backbones run in the dtype whose matmul peak measures fastest on the device (bf16 on GPUs and AMX CPUs,
fp32 on AVX2-only CPUs, where bf16 is emulated); the codec decodes in fp32. Every timed function runs once
untimed first; GPU regions are timed with CUDA events (:mod:`omniforcing.bench.timing`).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

import torch

from omniforcing.bench.flops import PEAK_DTYPES, count_flops, fastest_dtype, measure_peaks
from omniforcing.bench.report import Report, Table
from omniforcing.bench.timing import DeviceTimer, warm_up
from omniforcing.codecs import AVCodec, CausalVideoAutoencoder, MelAudioCodec, MelAutoencoder
from omniforcing.inference.bidirectional import generate_bidirectional
from omniforcing.inference.clips import decode_latents, latent_noise
from omniforcing.inference.rollout import block_noise, block_shape, commit_block, denoise_block
from omniforcing.inference.stream_settings import StreamingSettings
from omniforcing.inference.streaming import StreamedBlock, StreamingGenerator
from omniforcing.models.presets import build_preset
from omniforcing.types import AVLatents

log = logging.getLogger(__name__)

PROMPT = "a red ball bounces"
TEACHER_STEPS, TEACHER_CFG = 32, 3.0
STUDENT_TIMES = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class StreamingBenchConfig:
    """Sizes of one run: ``quick`` is a smoke run for tests (tiny preset, short streams)."""

    preset: str
    clip_seconds: int
    stream_seconds: int
    window: float
    positions: tuple[int, ...]
    overlap_blocks: int
    repeats: int
    rounds: int
    quick: bool

    @classmethod
    def make(cls, quick: bool) -> StreamingBenchConfig:
        if quick:
            return cls("tiny", 1, 6, 2.0, (1, 2, 5, 6), 3, 1, 2, True)
        return cls("small", 10, 120, 10.0, (1, 2, 5, 10, 20, 30, 60, 90, 120), 12, 2, 5, False)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def bench_models(config: StreamingBenchConfig, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.nn.Module, AVCodec]:
    """(causal student with 16 sinks, bidirectional teacher, codec) at one size, random weights, eval mode.

    The backbones are cast to ``dtype``; the codec stays in float32.

    The codec is the learned one at its default size; a quick run uses a smaller one with the same latent
    shapes (16x16 frames, 2 Griffin-Lim iterations), which keeps the smoke test fast.
    """
    torch.manual_seed(0)
    student = build_preset(config.preset, causal=True, num_audio_sinks=16).to(device, dtype).eval()
    teacher = build_preset(config.preset, causal=False).to(device, dtype).eval()
    if config.quick:
        codec = AVCodec(CausalVideoAutoencoder(size=16, spatial_factor=4, widths=(8, 8), group_width=16),
                        MelAutoencoder(MelAudioCodec(griffin_lim_iters=2, nnls_iters=2), hidden_channels=32))
    else:
        codec = AVCodec(CausalVideoAutoencoder(), MelAutoencoder())
    return student, teacher, codec.to(device).eval()


@dataclass
class TeacherRun:
    """Seconds spent by the teacher on one clip: generation and decoding (its first frame is ready at the end)."""

    generate: float
    decode: float


def run_teacher(teacher: torch.nn.Module, codec: AVCodec, seconds: int, device: torch.device) -> TeacherRun:
    """Generate and decode one clip with the teacher (32 Euler steps, CFG 3)."""
    noise = latent_noise(codec, seconds, 1, generator=torch.Generator().manual_seed(0), device=device)
    with torch.inference_mode():
        with DeviceTimer(device) as generation:
            latents = generate_bidirectional(teacher, [PROMPT], noise, steps=TEACHER_STEPS,
                                             video_scale=TEACHER_CFG, audio_scale=TEACHER_CFG)
        with DeviceTimer(device) as decoding:
            decode_latents(codec, latents, [PROMPT])
    return TeacherRun(generation.ms / 1e3, decoding.ms / 1e3)


def run_student(generator: StreamingGenerator, seconds: int) -> list[StreamedBlock]:
    """Stream ``seconds`` and keep every block's timings (media dropped to keep memory flat)."""
    blocks = []
    for block in generator.stream(PROMPT, seconds):
        block.video = block.audio = None
        blocks.append(block)
    return blocks


def _settings(**overrides) -> StreamingSettings:
    return StreamingSettings(video_times=STUDENT_TIMES, **overrides)


def teacher_table(student, teacher, codec, config: StreamingBenchConfig, device) -> tuple[Table, dict]:
    """(a) and (c): the same clip from the teacher and from the streaming student.

    The two runs alternate ``config.repeats`` times and each model keeps its fastest run, so a burst of load
    from other processes does not land on one model only.
    """
    seconds = config.clip_seconds
    teacher_runs, student_runs = [], []
    for _ in range(config.repeats):
        teacher_runs.append(run_teacher(teacher, codec, seconds, device))
        student_runs.append(run_student(StreamingGenerator(student, codec, _settings(window_seconds=config.window)),
                                        seconds))
    teacher_run = min(teacher_runs, key=lambda r: r.generate + r.decode)
    blocks = min(student_runs, key=lambda b: b[-1].ready_seconds)
    generate = sum(b.generate_ms for b in blocks) / 1e3
    decode = sum(b.decode_ms for b in blocks) / 1e3
    teacher_total = teacher_run.generate + teacher_run.decode
    table = Table(f"Student streaming vs bidirectional teacher ({config.preset} preset, {seconds}-s clip + lead)",
                  ["model", "sampling", "backbone forwards", "generate (s)", "decode (s)", "total (s)",
                   "first media ready (s)", "real-time factor"])
    media = seconds + 1 / 24
    table.add("teacher (bidirectional)", f"{TEACHER_STEPS} Euler steps, CFG {TEACHER_CFG:g}", 2 * TEACHER_STEPS,
              teacher_run.generate, teacher_run.decode, teacher_total, teacher_total, teacher_total / media)
    table.add("student (causal, streaming)", "4 few-step steps + commit per block, no CFG", 5 * len(blocks),
              generate, decode, blocks[-1].ready_seconds, blocks[0].ready_seconds, blocks[-1].ready_seconds / media)
    table.notes = ("Teacher forwards run over the whole clip; student forwards over one 1-s block against its KV "
                   "cache. first media ready = time to first block for the student (block 0: lead frame + lead "
                   "audio latent), the whole generation for the teacher. real-time factor = wall time / media "
                   f"time (< 1 is faster than real time). Best of {config.repeats} alternating run(s) per model; "
                   "decoding on the same thread (no overlap).")
    summary = {"speedup_vs_teacher": teacher_total / blocks[-1].ready_seconds,
               "speedup_vs_teacher_generation_only": teacher_run.generate / generate,
               "time_to_first_block_s": blocks[0].ready_seconds,
               "time_to_first_second_s": blocks[1].ready_seconds,
               "real_time_factor_student": blocks[-1].ready_seconds / media,
               "teacher_seconds": teacher_total, "teacher_generate_seconds": teacher_run.generate,
               "student_seconds": blocks[-1].ready_seconds}
    return table, summary


def _around(values: list[float], index: int, radius: int = 2) -> float:
    """Median of ``values`` within ``radius`` of ``index`` (single block timings are noisy on a shared CPU)."""
    return statistics.median(values[max(0, index - radius):index + radius + 1])


class CacheProbe:
    """One stream generated with the engine's primitives and cache, whose blocks can be replayed and re-timed at
    saved cache states (so that load from other processes does not masquerade as growth with position).

    Args:
        engine: supplies the network, the cache (windows, prefix policy) and the sampling settings.
    """

    def __init__(self, engine: StreamingGenerator) -> None:
        self.engine, self.cache = engine, engine.new_cache()
        self.generator = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            self.text = engine.network.encode_text([PROMPT])
        codec = engine.codec
        self.latent_shapes = ((codec.video.latent_channels, *codec.video.latent_size), (codec.audio.latent_channels,))
        self.saved: dict[int, tuple[object, AVLatents]] = {}

    @torch.inference_mode()
    def advance(self, block: int, keep: bool) -> float:
        """Generate and commit ``block``; keep the cache state before it if ``keep``. Returns its time in ms."""
        noise = block_noise(block_shape(self.engine.network, block, *self.latent_shapes), 1, self.generator,
                            self.engine.device)
        if keep:
            self.saved[block] = (self.cache.snapshot(), noise)
        return self._run(block, noise)

    @torch.inference_mode()
    def replay(self, block: int) -> float:
        """Time ``block`` again from its saved cache state."""
        state, noise = self.saved[block]
        self.cache.restore(state)
        return self._run(block, noise)

    def _run(self, block: int, noise: AVLatents) -> float:
        times = list(self.engine.settings.video_times)
        with DeviceTimer(self.engine.device) as timer:
            x0 = denoise_block(self.engine.network, self.text, self.cache, block, noise, times,
                               generator=self.generator)
            commit_block(self.engine.network, self.text, self.cache, block, x0)
        return timer.ms


def latency_table(student, codec, config: StreamingBenchConfig) -> tuple[Table, dict]:
    """(b): per-block latency against stream position, rolling window vs never evicting."""
    probes = [CacheProbe(StreamingGenerator(student, codec, _settings(window_seconds=window, decode=False)))
              for window in (config.window, None)]
    streamed: list[list[float]] = [[], []]
    sizes: list[list[int]] = [[], []]
    for block in range(1 + config.stream_seconds):  # the two streams alternate block by block
        for probe, times, size in zip(probes, streamed, sizes):
            times.append(probe.advance(block, block in config.positions))
            size.append(probe.cache.nbytes())
    best = [dict.fromkeys(config.positions, float("inf")) for _ in probes]
    for _ in range(config.rounds):
        for position in config.positions:
            for probe, fastest in zip(probes, best):
                fastest[position] = min(fastest[position], probe.replay(position))
    dtype = dtype_name(next(student.parameters()).dtype)
    table = Table(f"Per-block latency vs stream position ({config.preset} preset, {dtype})",
                  ["stream position (s)", f"block, {config.window:g}-s window (ms)", "block, never evicts (ms)",
                   "ratio", "streamed, window (ms)", "streamed, never evicts (ms)", "KV cache, window (MiB)",
                   "KV cache, never evicts (MiB)"])
    for position in config.positions:  # v1 layout: block p holds second p of the stream
        table.add(position, best[0][position], best[1][position], best[1][position] / best[0][position],
                  _around(streamed[0], position), _around(streamed[1], position), sizes[0][position] / 2**20,
                  sizes[1][position] / 2**20)
    table.notes = (f"block = 4 denoising forwards + 1 commit forward of the 1-s block (3 video + 25 audio latents) at "
                   f"that position, re-timed from a saved cache state: best of {config.rounds} interleaved rounds. "
                   "streamed = the same blocks timed once while streaming, median of the 5 around the position "
                   "(the two streams alternate block by block). Decoding (constant per block) is in the tables "
                   "above. Batch 1, 16 audio sinks, v1 prefix, KV cache after the block.")
    last, five = config.positions[-1], 5
    summary = {"latency_flatness": best[0][last] / best[0][five],
               "latency_flatness_never_evicts": best[1][last] / best[1][five],
               "latency_flatness_streamed": _around(streamed[0], last) / _around(streamed[0], five),
               f"block_ms_at_{last}s_window": best[0][last], f"block_ms_at_{last}s_never_evicts": best[1][last],
               "kv_cache_mib_window": sizes[0][-1] / 2**20, "kv_cache_mib_never_evicts_at_end": sizes[1][-1] / 2**20}
    return table, summary


def overlap_table(student, codec, config: StreamingBenchConfig) -> tuple[Table, dict]:
    """Whether generating on a background thread while the caller decodes pays on this machine."""
    table = Table("Overlap of generation and decoding", ["mode", "torch threads", "wall per block (ms)",
                                                         "generate (ms)", "decode (ms)"])
    runs: dict[bool, list[list[StreamedBlock]]] = {False: [], True: []}
    for _ in range(config.repeats):  # alternate the modes; each keeps its fastest run
        for overlap in (False, True):
            settings = _settings(window_seconds=config.window, overlap=overlap)
            runs[overlap].append(run_student(StreamingGenerator(student, codec, settings), config.overlap_blocks))
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


def flops_table(student, teacher, codec, config: StreamingBenchConfig, block_ms: float,
                teacher_generate_seconds: float, peaks: dict[torch.dtype, tuple[float, int]],
                device: torch.device) -> tuple[Table, dict]:
    """(f): counted FLOPs per generated second, and the utilisation against the measured matmul peak of the dtype
    the models run in."""
    generator = StreamingGenerator(student, codec, _settings(window_seconds=config.window, decode=False))
    blocks = generator.latent_blocks(PROMPT)
    for _ in range(int(config.window) + 2):  # fill the window: steady state
        next(blocks)
    student_flops = count_flops(lambda: next(blocks))
    noise = latent_noise(codec, config.clip_seconds, 1, device=device)
    with torch.inference_mode():
        teacher_flops = count_flops(lambda: generate_bidirectional(teacher, [PROMPT], noise, steps=1,
                                                                   video_scale=TEACHER_CFG))
        latents = generator.generate_latents(PROMPT, 1)
        decode_flops = count_flops(lambda: decode_latents(codec, latents.map(lambda m: m[:, 1:]), [PROMPT]))
    dtype = next(student.parameters()).dtype
    peak = peaks[dtype][0] * 1e12
    teacher_per_second = teacher_flops * TEACHER_STEPS / config.clip_seconds
    teacher_rate = teacher_flops * TEACHER_STEPS / teacher_generate_seconds
    student_rate = student_flops / (block_ms / 1e3)
    table = Table(f"Model FLOPs per generated second and utilisation ({dtype_name(dtype)})",
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
                   "with the faster peak on this device, in which the backbones ran; the teacher's includes the "
                   "CFG branch. Text encoding is counted in neither.")
    summary = {"flops_per_generated_second_student": student_flops,
               "flops_per_generated_second_teacher": teacher_per_second,
               "matmul_peak_tflops_float32": peaks[torch.float32][0],
               "matmul_peak_tflops_bfloat16": peaks[torch.bfloat16][0],
               "utilisation_student": student_rate / peak, "utilisation_teacher": teacher_rate / peak}
    return table, summary


def dtype_table(student, codec, device: torch.device) -> tuple[Table, dict]:
    """The student's block time in each dtype of the peak measurement (bf16 pays only with bf16 matrix units)."""
    table = Table("Student block time by dtype", ["dtype", "generate per block (ms)"])
    chosen = next(student.parameters()).dtype
    times = {}
    for dtype in PEAK_DTYPES:
        student.to(dtype)
        generator = StreamingGenerator(student, codec, _settings(decode=False))
        warm_up(lambda: run_student(generator, 0), device)
        blocks = run_student(generator, 3)
        times[dtype] = statistics.median(b.generate_ms for b in blocks[1:])
        table.add(dtype_name(dtype), times[dtype])
    student.to(chosen)
    table.notes = ("Median over blocks 1-3 of a fresh stream (window not yet full), after an untimed prefix block. "
                   f"The other tables ran in {dtype_name(chosen)}.")
    return table, {"bf16_over_fp32_block_time": times[torch.bfloat16] / times[torch.float32]}


def warm_up_models(student, teacher, codec, device: torch.device) -> None:
    """One untimed teacher step and a 1-s student stream with decoding (first-call costs out of the tables)."""
    noise = latent_noise(codec, 1, 1, device=device)
    with torch.inference_mode():
        warm_up(lambda: generate_bidirectional(teacher, [PROMPT], noise, steps=1, video_scale=TEACHER_CFG), device)
    warm_up(lambda: run_student(StreamingGenerator(student, codec, _settings()), 1), device)


def run_streaming_bench(quick: bool = False, threads: int | None = 1) -> Report:
    """Run the streaming suite; returns a :class:`Report` whose summary carries ``speedup_vs_teacher`` and
    ``latency_flatness`` (per-block latency at the last measured position over the latency at 5 s).

    Args:
        quick: tiny preset, small codec, 1-s clip, 6-s stream (a smoke run for tests; numbers mean little).
        threads: torch CPU threads (``None`` keeps the current setting); one thread gives stable numbers on a
            shared CPU and leaves a core for the overlap thread.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = StreamingBenchConfig.make(quick)
    peaks = measure_peaks(device, max_size=512 if config.quick else (8192 if device.type == "cuda" else 4096))
    dtype = fastest_dtype(peaks)
    log.info("matmul peaks %s; models run in %s", {dtype_name(k): v for k, v in peaks.items()}, dtype_name(dtype))
    student, teacher, codec = bench_models(config, device, dtype)
    warm_up_models(student, teacher, codec, device)
    report = Report("streaming")
    report.summary["dtype"] = dtype_name(dtype)
    log.info("teacher vs student on a %d-s clip", config.clip_seconds)
    table, summary = teacher_table(student, teacher, codec, config, device)
    report.tables.append(table)
    report.summary.update(summary)
    log.info("latency vs position up to %d s", config.stream_seconds)
    table, latency = latency_table(student, codec, config)
    report.tables.append(table)
    report.summary.update(latency)
    last = config.positions[-1]
    extras = (overlap_table(student, codec, config),
              flops_table(student, teacher, codec, config, latency[f"block_ms_at_{last}s_window"],
                          summary["teacher_generate_seconds"], peaks, device),
              dtype_table(student, codec, device))
    for table, extra in extras:
        report.tables.append(table)
        report.summary.update(extra)
    return report


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    print(run_streaming_bench(quick="--quick" in sys.argv).to_markdown())
