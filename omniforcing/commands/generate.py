"""``omniforcing generate``: prompt -> mp4 with sound, from a checkpoint, an exported folder or a reference name.

A bidirectional model (the teacher) generates the whole clip at once. A causal student streams: blocks are
generated and decoded one second at a time, appended to a fragmented mp4 that plays while it grows, and
optionally written raw to a pipe (framing in :mod:`omniforcing.inference.raw_stream`).

``--checkpoint`` takes a path or the name of a reference model: a folder of ``omniforcing export`` under
:data:`REFERENCE_DIR` (``checkpoints/reference/`` of the repository, or ``$OMNIFORCING_REFERENCE_DIR``).
Whatever backbone the model records is rebuilt by its class path; this command only uses the backbone protocol
(:class:`~omniforcing.models.protocol.AVBackbone`), never a concrete class.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Literal, TextIO

import torch

from omniforcing.data.mp4_writers import StreamingMp4Writer, write_mp4
from omniforcing.errors import InvalidInputError, MissingInputError, UserError, check_positive
from omniforcing.inference.export import CONFIG_NAME, load_model
from omniforcing.inference.generation import generate_teacher_clips
from omniforcing.inference.raw_stream import AudioFormat, RawStreamHeader, RawStreamWriter
from omniforcing.inference.stream_settings import compiles_on, settings_from_config
from omniforcing.inference.streaming import StreamedBlock, StreamingGenerator
from omniforcing.sampling.capture import compile_mode

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "reference"
"""Where reference models live (one ``omniforcing export`` folder per name); ``$OMNIFORCING_REFERENCE_DIR``
overrides it."""

Dtype = Literal["auto", "float32", "bfloat16"]


def reference_dir() -> Path:
    """The reference-model folder in effect: ``$OMNIFORCING_REFERENCE_DIR`` if set, else :data:`REFERENCE_DIR`."""
    override = os.environ.get("OMNIFORCING_REFERENCE_DIR")
    return Path(override) if override else REFERENCE_DIR


def reference_names(root: Path | None = None) -> list[str]:
    """Names of the reference models under ``root`` (folders holding an exported ``config.json``), sorted."""
    root = reference_dir() if root is None else root
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir() if (child / CONFIG_NAME).is_file())


def resolve_checkpoint(checkpoint: str) -> Path:
    """The model path for ``--checkpoint``: an existing path as given, else the reference model of that name.

    Raises:
        MissingInputError: neither a path nor a reference name; the message lists the available names.
    """
    path = Path(checkpoint)
    if path.exists():
        return path
    root = reference_dir()
    if path.name == checkpoint and (root / checkpoint / CONFIG_NAME).is_file():
        return root / checkpoint
    names = reference_names(root)
    available = ", ".join(names) if names else "none yet"
    raise MissingInputError(f"--checkpoint {checkpoint!r} is neither a .ckpt file or exported folder nor a "
                            f"reference model in {root} (available: {available})")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a device that does not exist here is an ``InvalidInputError``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise InvalidInputError(f"--device {device!r} is not a device (auto, cpu, cuda, cuda:N)") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"--device {device}: no CUDA device is available here")
    return resolved


def resolve_dtype(dtype: Dtype, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU.

    CPUs without bf16 matrix units (AVX2 only) run bf16 matmuls two orders of magnitude slower than fp32; on
    the AMX CPU of docs/benchmarks.md bf16 matmuls peak 6x higher, yet the small student streams faster in fp32.
    Pass ``bfloat16`` explicitly where it pays (``omniforcing bench --suite streaming`` measures both).
    """
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def generate(
    *,
    checkpoint: str,
    prompt: str,
    seconds: int,
    out: Path | None = None,
    steps: int | None = None,
    window: float | None = None,
    cfg: float | None = None,
    audio_cfg: float | None = None,
    seed: int = 0,
    device: str = "auto",
    video_steps: int | None = None,
    audio_steps: int | None = None,
    audio_window: float | None = None,
    step_size: float | None = None,
    prefix_position: Literal["absolute", "relative"] | None = None,
    overlap: bool = False,
    raw: str | None = None,
    raw_audio: AudioFormat = "f32",
    threads: int | None = None,
    dtype: Dtype = "auto",
    compile: bool | None = None,
    exact_decode: bool = False,
) -> None:
    """Generate one clip for a prompt and write it as an mp4 (H.264 + AAC); causal students stream it.

    Args:
        checkpoint: a Lightning ``.ckpt`` from ``omniforcing fit``, a folder from ``omniforcing export``, or the
            name of a reference model (a folder under ``checkpoints/reference/``, e.g. ``student``). The backbone
            class it records is rebuilt (``DualStreamTransformer``, ``LTX2Backbone``, ...); classes outside
            ``omniforcing`` need their package in ``$OMNIFORCING_TRUSTED_PACKAGES``.
        prompt: the caption to generate.
        seconds: seconds of content after the lead frame.
        out: output ``.mp4`` path (written progressively for streaming students).
        steps: sampler steps of both modalities (default: the model's recorded setting).
        window: streaming students only: KV-cache window in seconds (default 10; memory and per-block cost
            stay constant once it is full).
        cfg: classifier-free guidance scale for video (and audio unless ``audio_cfg`` is given); distilled
            students default to 1 (no guidance).
        audio_cfg: guidance scale for audio.
        seed: noise seed.
        device: ``auto``, ``cpu`` or ``cuda``.
        video_steps: streaming: denoising steps of video (overrides ``steps``).
        audio_steps: streaming: denoising steps of audio (overrides ``steps``; asymmetric steps).
        audio_window: streaming: audio KV-cache window in seconds (default: ``window``).
        step_size: streaming: step-size conditioning value for models that need it (Mutual Forcing).
        prefix_position: streaming: RoPE policy of the pinned prefix, ``absolute`` or ``relative`` (default:
            the model's).
        overlap: streaming: generate the next block on a background thread while the current one is decoded
            and written.
        raw: streaming: also write raw blocks to this path, ``-`` for stdout (progress then goes to stderr).
        raw_audio: sample format of the raw audio, ``f32`` or ``s16``.
        threads: CPU threads for torch (``None``: torch's default). On shared or busy CPUs one thread per
            process is often faster than several spinning on contended cores.
        dtype: dtype of the backbone: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32`` or ``bfloat16``
            (worth it on CPUs with bf16 matrix units such as AMX). The codec always decodes in float32.
        compile: run the backbone compiled: a streaming student captures every block step
            (``omniforcing.sampling.capture``: compiled layers, CUDA graphs on CUDA); a bidirectional model
            compiles the layers of its whole-clip forwards (``compile_core``; CUDA graphs on CUDA, as the student).
            Default on CUDA, eager elsewhere (``--compile true|false``).
        exact_decode: streaming: hold each block back by the codec's decoder lookahead so the streamed media
            equal whole-clip decoding (non-causal decoders such as LTX-2's; adds that latency).
    """
    if out is None and raw is None:
        raise UserError("give --out FILE.mp4, --raw PATH (or -), or both")
    check_positive(seconds=seconds, steps=steps, window=window, video_steps=video_steps, audio_steps=audio_steps,
                   audio_window=audio_window, threads=threads)
    if threads is not None:
        torch.set_num_threads(threads)
    target = resolve_device(device)
    network, codec, config = load_model(resolve_checkpoint(checkpoint), target)
    network.to(resolve_dtype(dtype, target))
    if not network.causal:
        if out is None:
            raise UserError("a bidirectional model writes an mp4: give --out")
        if compiles_on(target, compile):
            # the same compiled layers as the streaming student's and the bench's teacher (CUDA graphs on CUDA)
            network.compile_core(True, mode=compile_mode(target))
        _generate_whole_clip(network, codec, config, prompt, seconds, out, steps, window, cfg, audio_cfg, seed)
        return
    settings = settings_from_config(
        config, video_steps=video_steps or steps, audio_steps=audio_steps or (steps if video_steps else None),
        window_seconds=window, audio_window_seconds=audio_window, video_cfg=cfg,
        audio_cfg=audio_cfg if audio_cfg is not None else cfg, step_size=step_size, prefix_position=prefix_position,
        overlap=overlap, compile=compile, exact_decode=exact_decode or None)
    generator = StreamingGenerator(network, codec, settings)
    _stream(generator, prompt, seconds, seed, out, raw, raw_audio)


def _generate_whole_clip(network, codec, config, prompt: str, seconds: int, out: Path, steps: int | None,
                         window: float | None, cfg: float | None, audio_cfg: float | None, seed: int) -> None:
    if window is not None:
        print("note: --window applies to streaming students; a bidirectional model generates the whole clip")
    start = time.perf_counter()
    clips = generate_teacher_clips(network, codec, config, [prompt], seconds, seed, steps, cfg,
                                   audio_cfg if audio_cfg is not None else cfg)
    elapsed = time.perf_counter() - start
    if clips.video is None:
        raise UserError("this model generates audio only; an mp4 needs a video stream")
    # yuv420p: the pixel format every player decodes (shards use 4:4:4 for fidelity, see docs/data.md)
    write_mp4(out, clips.video[0].numpy(), clips.fps, None if clips.audio is None else clips.audio[0].numpy(),
              clips.sample_rate, pixel_format="yuv420p")
    print(f"wrote {out} ({seconds} s + lead) in {elapsed:.2f} s: whole clip at once (bidirectional model)")


def _stream(generator: StreamingGenerator, prompt: str, seconds: int, seed: int, out: Path | None, raw: str | None,
            raw_audio: AudioFormat) -> None:
    settings, codec = generator.settings, generator.codec
    has_video, has_audio = settings.modality != "audio", settings.modality != "video"
    if out is not None and not has_video:
        raise UserError("this model generates audio only; an mp4 needs a video stream (use --raw)")
    log: TextIO = sys.stderr if raw == "-" else sys.stdout
    raw_file = None if raw is None else (sys.stdout.buffer if raw == "-" else open(raw, "wb"))  # noqa: SIM115
    height, width = codec.video.size if has_video else (0, 0)
    raw_writer = None if raw_file is None else RawStreamWriter(raw_file, RawStreamHeader(
        codec.video.fps if has_video else 0, height, width, codec.audio.sample_rate if has_audio else 0,
        raw_audio if has_audio else None))
    writer = None if out is None else StreamingMp4Writer(out, codec.video.fps,
                                                         codec.audio.sample_rate if has_audio else 0)
    print(f"streaming {seconds} s + lead in {generator.num_blocks(seconds)} blocks: video steps "
          f"{list(settings.video_times)}, audio steps {list(settings.audio_times or settings.video_times)}, "
          f"window {settings.window_seconds} s, cfg {settings.video_cfg}/{settings.audio_cfg}, "
          f"{str(generator.network.dtype).removeprefix('torch.')} on {generator.device}", file=log)
    blocks: list[StreamedBlock] = []
    try:
        for block in generator.stream(prompt, seconds, seed):
            if writer is not None:
                writer.write(block.video, block.audio)
            if raw_writer is not None:
                raw_writer.write(block.index, block.video, block.audio)
            blocks.append(_without_media(block))
            print(f"block {block.index:4d}  media {block.start_seconds:7.2f} s +{block.seconds:.2f}  "
                  f"generate {block.generate_ms:7.1f} ms  decode {block.decode_ms:6.1f} ms  "
                  f"ready at {block.ready_seconds:7.2f} s", file=log, flush=True)
    finally:
        if writer is not None:
            writer.close()
        if raw_file is not None and raw != "-":
            raw_file.close()
    _summary(blocks, out, raw, log)


def _without_media(block: StreamedBlock) -> StreamedBlock:
    """Keep only the timings of a block (the media are written already; memory stays bounded)."""
    block.video = block.audio = None
    return block


def _summary(blocks: list[StreamedBlock], out: Path | None, raw: str | None, log: TextIO) -> None:
    wall = blocks[-1].ready_seconds
    media = blocks[-1].start_seconds + blocks[-1].seconds
    latency = [b.generate_ms + b.decode_ms for b in blocks[1:]] or [blocks[0].generate_ms + blocks[0].decode_ms]
    print(f"time to first block {blocks[0].ready_seconds:.3f} s; per-block latency (generate + decode) median "
          f"{statistics.median(latency):.1f} ms, max {max(latency):.1f} ms; real-time factor {wall / media:.3f} "
          f"({media:.2f} s of media in {wall:.2f} s; < 1 is faster than real time); KV cache "
          f"{blocks[-1].cache_bytes / 2**20:.2f} MiB", file=log)
    targets = [str(t) for t in (out, None if raw in (None, "-") else raw) if t is not None]
    if targets:
        print(f"wrote {', '.join(targets)}", file=log)
