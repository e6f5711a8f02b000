"""Issue 12's device check: eager vs captured streaming student against eager vs compiled teacher, on one GPU.

One preset and latent grid per invocation (so a shell ``timeout`` around each bounds it), every figure written
to ``--out`` as soon as it is measured. Random weights (speed does not depend on them), backbones in bf16,
the same objects ``omniforcing bench --suite streaming`` builds (:func:`omniforcing.bench.streaming.bench_models`)
and the same sampling (:func:`~omniforcing.bench.streaming.student_settings`: 4 steps + commit, no guidance,
10-s window; teacher: 32 Euler steps with CFG 3 on both modalities). The generation figures leave decoding
out; a separate stage times the teacher's whole-clip decode and the student's streaming decode, and
``speedup_with_decoding_vs_*`` combines them as the bench's ``speedup_vs_teacher`` does. Timings: CUDA events
around each stage after a warm-up run that compiles; the student's per-block times are its own
device-synchronised ``generate_ms``.

    python benchmarks/device_check.py --preset base --grid 4x4 --out $OUT/base_4x4.json \
        --backends cudagraphs inductor --teacher-compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch

from omniforcing.bench.flops import count_flops, measure_peaks
from omniforcing.bench.streaming import (
    PROMPT,
    TEACHER_CFG,
    TEACHER_STEPS,
    StreamingBenchConfig,
    bench_models,
    student_settings,
)
from omniforcing.bench.timing import DeviceTimer
from omniforcing.inference.bidirectional import generate_bidirectional
from omniforcing.inference.clips import decode_latents, latent_noise
from omniforcing.inference.streaming import StreamingGenerator

CLIP_SECONDS = 10
STREAM_SECONDS = 13  # blocks 0..13: blocks 12-13 run against a full 10-s window that has evicted


def teacher_seconds(teacher, codec, device, steps: int = TEACHER_STEPS) -> float:
    noise = latent_noise(codec, CLIP_SECONDS, 1, generator=torch.Generator().manual_seed(0), device=device)
    with torch.inference_mode(), DeviceTimer(device) as timer:
        generate_bidirectional(teacher, [PROMPT], noise, steps=steps, video_scale=TEACHER_CFG, audio_scale=TEACHER_CFG)
    return timer.ms / 1e3


def student_stream(generator: StreamingGenerator) -> tuple[list[float], list]:
    """Per-block generation ms of a ``STREAM_SECONDS`` stream (seed 0) and its blocks' latents."""
    times, latents = [], []
    for block in generator.latent_blocks(PROMPT, STREAM_SECONDS, seed=0):
        times.append(block.generate_ms)
        latents.append(block.latents)
    return times, latents


def summarise(times: list[float]) -> dict:
    return {"block_ms": times, "first_block_ms": times[0], "steady_block_ms": statistics.median(times[-2:]),
            "clip_generate_s": sum(times[:CLIP_SECONDS + 1]) / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--grid", default="4x4")
    parser.add_argument("--backends", nargs="*", default=["cudagraphs"])
    parser.add_argument("--teacher-compile", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cuda (the check); cpu only to smoke-test this script")
    args = parser.parse_args()
    device = torch.device(args.device)
    grid = tuple(int(v) for v in args.grid.split("x"))
    result: dict = {"preset": args.preset, "grid": args.grid, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "dtype": "bfloat16", "errors": {}}

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=1, default=str))

    def stage(name: str, fn) -> None:
        start = time.perf_counter()
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - recorded, the next stage runs
            result["errors"][name] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
        result.setdefault("stage_wall_s", {})[name] = time.perf_counter() - start
        save()
        print(f"[{args.preset} {args.grid}] {name}: {result['stage_wall_s'][name]:.1f} s", flush=True)

    config = StreamingBenchConfig.make(False, args.preset, grid, None)
    student, teacher, codec = bench_models(config, device, torch.bfloat16)
    peak = measure_peaks(device, 8192 if device.type == "cuda" else 512)[torch.bfloat16][0] * 1e12
    result["bf16_matmul_peak_tflops"] = peak / 1e12

    def eager_teacher() -> None:
        teacher_seconds(teacher, codec, device, steps=1)
        result["teacher_eager_s"] = teacher_seconds(teacher, codec, device)

    def eager_student() -> None:
        generator = StreamingGenerator(student, codec, student_settings(config, decode=False, compile=False))
        student_stream(generator)
        times, latents = student_stream(generator)
        result["student_eager"] = summarise(times)
        result["_eager_latents"] = latents

    def decoding() -> None:
        """What the bench's ``speedup_vs_teacher`` adds to generation: the teacher's whole-clip decode and the
        student's streaming decode (the learned codec's architecture, float32), so the with-decoding ratio
        and whether decoding bounds it (docs/benchmarks.md, "What bounds the CPU ratio") can be read on a GPU."""
        noise = latent_noise(codec, CLIP_SECONDS, 1, generator=torch.Generator().manual_seed(0), device=device)
        with torch.inference_mode():
            decode_latents(codec, noise, [PROMPT])  # warm-up
            with DeviceTimer(device) as timer:
                decode_latents(codec, noise, [PROMPT])
        result["teacher_decode_s"] = timer.ms / 1e3
        generator = StreamingGenerator(student, codec, student_settings(config, compile=False))
        list(generator.stream(PROMPT, 2))  # warm-up
        blocks = list(generator.stream(PROMPT, CLIP_SECONDS, seed=0))
        result["student_decode_ms"] = [b.decode_ms for b in blocks]
        result["student_clip_decode_s"] = sum(b.decode_ms for b in blocks) / 1e3

    def flops() -> None:
        generator = StreamingGenerator(student, codec, student_settings(config, decode=False, compile=False))
        blocks = generator.latent_blocks(PROMPT)
        for _ in range(config.steady_block):
            next(blocks)
        result["student_flops_per_block"] = count_flops(lambda: next(blocks))
        noise = latent_noise(codec, CLIP_SECONDS, 1, device=device)
        with torch.inference_mode():
            result["teacher_flops_per_step"] = count_flops(lambda: generate_bidirectional(
                teacher, [PROMPT], noise, steps=1, video_scale=TEACHER_CFG, audio_scale=TEACHER_CFG))

    def captured_student(backend: str):
        def run() -> None:
            settings = student_settings(config, decode=False, compile=True, compile_backend=backend)
            generator = StreamingGenerator(student, codec, settings)
            start = time.perf_counter()
            student_stream(generator)  # compiles and records the graphs
            warm = time.perf_counter() - start
            times, latents = student_stream(generator)
            eager = result.get("_eager_latents")
            diff = None if eager is None else max(
                (a - b).abs().max().item() for x, y in zip(latents, eager)
                for a, b in ((x.video, y.video), (x.audio, y.audio)))
            result[f"student_{backend}"] = {**summarise(times), "warm_up_stream_s": warm,
                                            "max_abs_diff_vs_eager": diff}
            student.compile_core(False)
        return run

    def compiled_teacher() -> None:
        teacher.compile_core(True)
        start = time.perf_counter()
        teacher_seconds(teacher, codec, device, steps=1)
        result["teacher_compile_warm_up_s"] = time.perf_counter() - start
        result["teacher_compiled_s"] = teacher_seconds(teacher, codec, device)
        teacher.compile_core(False)

    stage("teacher eager", eager_teacher)
    stage("student eager", eager_student)
    stage("flops", flops)
    stage("decoding", decoding)
    for backend in args.backends:
        stage(f"student {backend}", captured_student(backend))
    if args.teacher_compile:
        stage("teacher compiled", compiled_teacher)
    result.pop("_eager_latents", None)
    derive(result, peak)
    save()


def derive(result: dict, peak: float) -> None:
    """Ratios and utilisation from what was measured (absent inputs leave the figure out)."""
    students = {k: v for k, v in result.items() if k.startswith("student_") and isinstance(v, dict)}
    teachers = {k: result[k] for k in ("teacher_eager_s", "teacher_compiled_s") if k in result}
    flops_block, flops_step = result.get("student_flops_per_block"), result.get("teacher_flops_per_step")
    decode_teacher, decode_student = result.get("teacher_decode_s"), result.get("student_clip_decode_s")
    for name, run in students.items():
        for teacher_name, teacher_s in teachers.items():
            run[f"speedup_vs_{teacher_name.removesuffix('_s')}"] = teacher_s / run["clip_generate_s"]
            if decode_teacher is not None and decode_student is not None:  # as the bench's speedup_vs_teacher
                run[f"speedup_with_decoding_vs_{teacher_name.removesuffix('_s')}"] = (
                    (teacher_s + decode_teacher) / (run["clip_generate_s"] + decode_student))
        run["real_time_factor"] = run["steady_block_ms"] / 1e3
        if flops_block:
            run["utilisation"] = flops_block / (run["steady_block_ms"] / 1e3) / peak
    if flops_step:
        for teacher_name, teacher_s in teachers.items():
            result[f"utilisation_{teacher_name.removesuffix('_s')}"] = flops_step * TEACHER_STEPS / teacher_s / peak


if __name__ == "__main__":
    main()
