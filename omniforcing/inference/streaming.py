"""Real-time streaming from any causal student: one macro-block of video and audio at a time, for any length.

The loop is the one the causal methods train with (the cached block generator of :mod:`omniforcing.sampling`,
ALGORITHMS.md §5.4): for each 1-s macro-block, fresh noise, the few-step sampler against the KV cache, then a
commit forward that writes the block's clean keys/values; the block is decoded by the causal codec as soon as it exists
(:class:`~omniforcing.inference.stream_decoding.IncrementalDecoder`). The cache rolls: with a window of
``W`` seconds it keeps block 0 (the prefix, with the audio sinks) and the last ``W - 1`` blocks per modality,
so memory and per-block cost are constant once the window is full (``AVKVCache``). One engine serves
OmniForcing students (v1 prefix with sinks or v2 prefix), Mutual Forcing's few-step mode (step-size
conditioning) and causal flow-matching models alike; the settings say how to sample
(:class:`~omniforcing.inference.stream_settings.StreamingSettings`).

Prompt switching: ``prompt`` may be a callable of the block index, asked at every block boundary; when its text
changes, the conditional cache is rebound to the new text (``AVKVCache.set_text``) and keeps its history, so the
new prompt applies from that block on (the unconditional CFG branch keeps the null prompt).

Captured execution: with ``settings.compile`` (default on CUDA) every block step runs through
``omniforcing.sampling.capture`` (CUDA graphs); on CPU it runs eager.

Overlap: with ``settings.overlap`` the blocks are generated on a background thread that runs at most
``lookahead`` blocks ahead, while the consumer's thread decodes (and writes, plays, ...) earlier blocks.
Whether that pays depends on free cores; ``omniforcing bench --suite streaming`` measures it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from omniforcing.codecs.base import AVCodec
from omniforcing.inference.clips import GeneratedClips
from omniforcing.inference.export import load_model
from omniforcing.inference.stream_decoding import IncrementalDecoder
from omniforcing.inference.stream_settings import StreamingSettings, compiles_on, settings_from_config
from omniforcing.models.kv_cache import AVKVCache
from omniforcing.models.layout import BlockLayout, block_start
from omniforcing.models.protocol import AVBackbone
from omniforcing.models.text import TextContext
from omniforcing.sampling.blocks import BlockGenerator, BlockStep, block_step
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import BlockTimes
from omniforcing.types import AVLatents

log = logging.getLogger(__name__)

T = TypeVar("T")

Prompt = str | Callable[[int], str]
"""A caption, or a function of the block index giving the caption from that block on (prompt switching)."""


@dataclass
class LatentBlock:
    """One generated macro-block before decoding.

    Args:
        index: macro-block index (0 = the prefix).
        latents: clean latents, video ``(1, n_v, C, h, w)`` and audio ``(1, n_a, C)``.
        generate_ms: wall time of its noise, denoising steps and commit.
        cache_bytes: bytes of committed keys/values after the commit (conditional cache; the guided branch
            holds as much again).
        cache_tokens: cached (video, audio) tokens per layer and kind after the commit.
    """

    index: int
    latents: AVLatents
    generate_ms: float
    cache_bytes: int
    cache_tokens: tuple[int, int]


@dataclass
class StreamedBlock:
    """One macro-block as the stream delivers it.

    Args:
        index: macro-block index (0 = the prefix: the lead frame and latent, plus the first second with the
            ``v2`` layout).
        video: ``(T_k, H, W, 3)`` uint8 frames (``None`` for audio-only models or without decoding).
        audio: ``(S_k,)`` float32 samples in ``[-1, 1]`` (``None`` for video-only models or without decoding).
        latents: the block's clean latents (batch 1).
        start_seconds: media time of the block's first frame / sample.
        seconds: media duration of the block.
        generate_ms: wall time to generate it (noise, denoising forwards, commit).
        decode_ms: wall time to decode it.
        ready_seconds: wall time from the start of the stream until the block was ready (time to first block
            for block 0).
        cache_bytes: bytes of the conditional KV cache after the block.
        cache_tokens: cached (video, audio) tokens per layer and kind after the block.
    """

    index: int
    video: Tensor | None
    audio: Tensor | None
    latents: AVLatents
    start_seconds: float
    seconds: float
    generate_ms: float
    decode_ms: float
    ready_seconds: float
    cache_bytes: int
    cache_tokens: tuple[int, int]

    @property
    def real_time_factor(self) -> float:
        """Generation plus decoding time over the media time the block holds (< 1: faster than real time)."""
        return (self.generate_ms + self.decode_ms) / 1e3 / self.seconds


class StreamingGenerator:
    """Stream audio and video from a causal student, block by block (plain PyTorch).

    Args:
        network: a causal :class:`~omniforcing.models.DualStreamTransformer` (any prefix, with or without
            sinks or step-size conditioning), in eval mode.
        codec: its codec.
        settings: sampling, cache and decoding settings (default: :class:`StreamingSettings`).

    Example::

        generator = StreamingGenerator.from_pretrained("runs/student/last.ckpt", window_seconds=10)
        for block in generator.stream("a ball bounces", seconds=60):
            player.push(block.video, block.audio)
    """

    def __init__(self, network: AVBackbone, codec: AVCodec, settings: StreamingSettings | None = None) -> None:
        if not network.causal:
            raise ValueError("streaming needs a causal (block-causal) network; a bidirectional model generates "
                             "whole clips (omniforcing.inference.bidirectional.generate_bidirectional)")
        self.network, self.codec = network.eval(), codec.eval()
        self.settings = settings or StreamingSettings()
        if network.step_size_conditioning and self.settings.step_size is None:
            raise ValueError("this network conditions on the sampler step size: set StreamingSettings.step_size "
                             "(omniforcing generate --step-size) to the value its few-step mode was trained with")
        if not network.step_size_conditioning and self.settings.step_size is not None:
            raise ValueError("step_size is set but this network has no step-size conditioning")

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: torch.device | str = "cpu", video_steps: int | None = None,
                        audio_steps: int | None = None, **overrides: Any) -> StreamingGenerator:
        """Load a ``.ckpt`` or exported folder; settings default from what the model recorded.

        Args:
            path: Lightning checkpoint of ``omniforcing fit`` or a folder of ``omniforcing export``.
            device: where to run.
            video_steps: denoising steps of video (``None``: the recorded schedule).
            audio_steps: denoising steps of audio (``None``: as video).
            **overrides: :class:`StreamingSettings` fields (``None`` keeps the recorded value).
        """
        network, codec, config = load_model(path, device)
        settings = settings_from_config(config, video_steps=video_steps, audio_steps=audio_steps, **overrides)
        return cls(network, codec, settings)

    # ---------------------------------------------------------------- geometry
    @property
    def device(self) -> torch.device:
        """Device of the network's parameters."""
        return self.network.device

    def num_blocks(self, seconds: int) -> int:
        """Macro-blocks of a stream of ``seconds`` whole seconds after the lead frame."""
        return BlockLayout.for_seconds(seconds, self.network.prefix).num_blocks

    def block_media_span(self, index: int) -> tuple[float, float]:
        """``(start, duration)`` in seconds of the media of block ``index``."""
        if self.settings.modality == "audio":
            rate, per_latent = self.codec.audio.latent_rate, self.codec.audio.samples_per_latent
            first, end = (block_start(b, self.network.prefix, rate) for b in (index, index + 1))
            scale = per_latent / self.codec.audio.sample_rate
            return first * scale, (end - first) * scale
        video = self.codec.video
        first, end = (block_start(b, self.network.prefix, video.latent_rate) for b in (index, index + 1))
        frame = (lambda latent: 0 if latent == 0 else 1 + video.temporal_stride * (latent - 1))
        return frame(first) / video.fps, (frame(end) - frame(first)) / video.fps

    def new_cache(self) -> AVKVCache:
        """An empty rolling cache with the settings' windows and prefix policy (batch 1)."""
        s = self.settings
        return self.network.new_cache(1, window_seconds=s.window_seconds, audio_window_seconds=s.audio_window_seconds,
                                      prefix_position=s.prefix_position)

    # ---------------------------------------------------------------- generation
    def latent_blocks(self, prompt: Prompt, seconds: int | None = None,
                      seed: int = 0) -> Generator[LatentBlock, None, None]:
        """Generate clean latents block by block (no decoding); ``seconds=None`` streams without end.

        Random draws come from one CPU generator seeded with ``seed``, drawn per block before its step in the
        order the step consumes them (:meth:`~omniforcing.sampling.blocks.BlockGenerator.draw`), so the stream
        is reproducible on any device, captured or not. ``prompt`` may be a callable of the block index
        (module docstring).
        """
        generator = torch.Generator().manual_seed(seed)
        blocks = itertools.count() if seconds is None else range(self.num_blocks(seconds))
        prompt_at = prompt if callable(prompt) else (lambda _: prompt)
        with torch.inference_mode():
            caption = prompt_at(0)
            sampler = self._block_generator(caption)
        for index in blocks:
            with torch.inference_mode():
                if index > 0 and (new_caption := prompt_at(index)) != caption:
                    caption = new_caption
                    self._switch_prompt(sampler, self.network.encode_text([caption]))
                start = time.perf_counter()
                x0 = sampler(index, generator)
                _synchronize(self.device)
                elapsed = (time.perf_counter() - start) * 1e3
            cache = sampler.denoiser.cond.cache
            yield LatentBlock(index, x0, elapsed, cache.nbytes(), cache.num_tokens())

    @property
    def compiled(self) -> bool:
        """Whether block steps run captured (``settings.compile``; ``None``: on CUDA only)."""
        return compiles_on(self.device, self.settings.compile)

    def block_step(self) -> BlockStep:
        """The block step streams run: captured by ``omniforcing.sampling.capture`` when :attr:`compiled`."""
        if not self.compiled:
            return block_step
        from omniforcing.sampling.capture import capture_block_step  # CUDA graphs: only imported when used

        return capture_block_step(block_step, backend=self.settings.compile_backend)

    def _block_generator(self, caption: str) -> BlockGenerator:
        """Fresh caches (two with guidance) and the cached block generator of a stream for ``caption``."""
        s = self.settings
        null_text = null_cache = None
        if s.guided:
            null_text = self.network.encode_text([caption], drop=torch.ones(1, dtype=torch.bool))
            null_cache = self.new_cache()
        denoiser = GuidedDenoiser(self.network, self.network.encode_text([caption]), null_text, s.video_cfg,
                                  s.audio_cfg, cache=self.new_cache(), null_cache=null_cache)
        video_latent, audio_latent = self._latent_shapes()
        times = BlockTimes.of(s.video_times, s.audio_times, video=video_latent is not None,
                              audio=audio_latent is not None)
        step_size = None if s.step_size is None else torch.full((1,), float(s.step_size), device=self.device)
        return BlockGenerator(denoiser, times, video_latent, audio_latent, step_size=step_size,
                              context_time=s.context_time, step=self.block_step())

    @staticmethod
    def _switch_prompt(sampler: BlockGenerator, text: TextContext) -> None:
        """Rebind the conditional cache to ``text``: later blocks use it, the committed history stays."""
        old = sampler.denoiser
        old.cond.cache.set_text(text)
        sampler.denoiser = GuidedDenoiser(
            old.network, text, None if old.uncond is None else old.uncond.text, old.video_scale, old.audio_scale,
            cache=old.cond.cache, null_cache=None if old.uncond is None else old.uncond.cache)

    def stream(self, prompt: Prompt, seconds: int | None = None, seed: int = 0) -> Iterator[StreamedBlock]:
        """Yield decoded macro-blocks of a stream for ``prompt``; the first is the prefix block.

        Args:
            prompt: the caption, or a callable of the block index giving it (prompt switching at block
                boundaries, module docstring).
            seconds: whole seconds after the lead frame (``None``: until the caller stops iterating).
            seed: noise seed (the same seed gives the same stream).
        """
        start = time.perf_counter()
        latents = self.latent_blocks(prompt, seconds, seed)
        if self.settings.overlap:
            latents = prefetch(latents, self.settings.lookahead)
        if not self.settings.decode:
            for block in latents:
                yield self._streamed(block, (None, None), 0.0, start)
            return
        decoder = IncrementalDecoder(self.codec, self.settings.video_decode_context,
                                     self.settings.audio_decode_context, exact=self.settings.exact_decode)
        held: deque[LatentBlock] = deque()  # generated, media not decoded yet (an exact decoder's lookahead)
        for block in latents:
            held.append(block)
            decode_start = time.perf_counter()
            media = decoder.push(block.latents)
            _synchronize(self.device)
            decode_ms = (time.perf_counter() - decode_start) * 1e3
            for pair in media:
                yield self._streamed(held.popleft(), pair, decode_ms / len(media), start)
        decode_start = time.perf_counter()
        media = decoder.finish()  # the stream ended: what the lookahead held back
        decode_ms = (time.perf_counter() - decode_start) * 1e3
        for pair in media:
            yield self._streamed(held.popleft(), pair, decode_ms / len(media), start)

    def _streamed(self, block: LatentBlock, media: tuple[Tensor | None, Tensor | None], decode_ms: float,
                  start: float) -> StreamedBlock:
        """The delivered block: its media (batch item 0, on the CPU), timings and cache size."""
        video, audio = media
        media_start, media_seconds = self.block_media_span(block.index)
        return StreamedBlock(block.index, None if video is None else video[0].cpu(),
                             None if audio is None else audio[0].float().cpu(), block.latents, media_start,
                             media_seconds, block.generate_ms, decode_ms, time.perf_counter() - start,
                             block.cache_bytes, block.cache_tokens)

    def generate_latents(self, prompt: Prompt, seconds: int, seed: int = 0) -> AVLatents:
        """The whole stream's clean latents, concatenated (``(1, Tv, C, h, w)`` / ``(1, Ta, C)``)."""
        blocks = [b.latents for b in self.latent_blocks(prompt, seconds, seed)]

        def cat(parts: list[Tensor | None]) -> Tensor | None:
            return None if parts[0] is None else torch.cat(parts, dim=1)

        return AVLatents(cat([b.video for b in blocks]), cat([b.audio for b in blocks]))

    def _latent_shapes(self) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
        modality = self.settings.modality
        video = (self.codec.video.latent_channels, *self.codec.video.latent_size) if modality != "audio" else None
        audio = (self.codec.audio.latent_channels,) if modality != "video" else None
        return video, audio


def generate_streaming_clips(network: AVBackbone, codec: AVCodec, config: dict[str, Any], captions: list[str],
                             seconds: int, seed: int = 0, steps: int | None = None) -> GeneratedClips:
    """Whole decoded clips from a causal student through the streaming engine (evaluation, sample logging).

    Same arguments as :func:`omniforcing.inference.generation.generate_teacher_clips`: settings come from what
    the model recorded (:func:`~omniforcing.inference.stream_settings.settings_from_config`), ``steps``
    overrides both modalities' steps. Caption ``i`` is streamed with seed ``seed + i``.

    Returns:
        :class:`~omniforcing.inference.clips.GeneratedClips` with video ``(B, 1 + 24 s, H, W, 3)`` uint8 and
        audio ``(B, 640 + 16000 s)`` float32 (``None`` for a modality the model does not generate).
    """
    generator = StreamingGenerator(network, codec, settings_from_config(config, video_steps=steps))
    videos, audios = [], []
    for index, caption in enumerate(captions):
        blocks = list(generator.stream(caption, seconds, seed + index))
        videos.append(None if blocks[0].video is None else torch.cat([b.video for b in blocks]))
        audios.append(None if blocks[0].audio is None else torch.cat([b.audio for b in blocks]))
    return GeneratedClips(None if videos[0] is None else torch.stack(videos),
                          None if audios[0] is None else torch.stack(audios),
                          codec.video.fps, codec.audio.sample_rate, list(captions))


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def prefetch(items: Generator[T, None, None], depth: int) -> Iterator[T]:
    """Run ``items`` on a background thread, at most ``depth`` items ahead of the consumer.

    Errors in the producer are re-raised in the consumer; when the consumer stops early the producer stops
    at its next item. PyTorch releases the GIL inside its kernels, so the two threads compute in parallel
    when cores are free.
    """
    channel: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                channel.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Failure(error))
        finally:
            items.close()  # in this thread, which ran it

    worker = threading.Thread(target=produce, name="omniforcing-stream", daemon=True)
    worker.start()
    try:
        while True:
            item = channel.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()
