"""The block-by-block autoregressive loop shared by streaming inference and the causal training methods.

One macro-block at a time (ALGORITHMS.md §5.2, §5.4): start from fresh noise, run the few-step sampler against
the KV cache (which holds the committed history and is never written by these denoising calls), then commit the
block's *clean* output to the cache by one more forward at the context time (clean-context refresh, default
``t = 0``). Self-Forcing (OmniForcing Stage III) uses :func:`denoise_block` with ``grad_step`` to keep the
gradient of exactly one denoising step; Mutual Forcing rolls out its history with the same functions under
``no_grad``; the streaming engine adds timing, decoding and eviction on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from omniforcing.diffusion.flow import add_noise, x0_from_velocity
from omniforcing.diffusion.guidance import classifier_free_guidance
from omniforcing.diffusion.samplers import fresh_noise
from omniforcing.models.kv_cache import AVKVCache
from omniforcing.models.layout import block_start
from omniforcing.models.parallelize import checkpoint_cached_forward
from omniforcing.models.text import TextContext
from omniforcing.types import AVLatents


@dataclass(frozen=True)
class BlockShape:
    """Latent shapes of one macro-block: ``video`` ``(Tv_k, C, h, w)`` and ``audio`` ``(Ta_k, C)``."""

    video: tuple[int, ...] | None
    audio: tuple[int, ...] | None


def block_shape(network: nn.Module, block: int, video_latent: tuple[int, ...] | None,
                audio_latent: tuple[int, ...] | None) -> BlockShape:
    """Shapes of ``block`` under the network's prefix layout, from one latent's shape per present modality.

    Args:
        network: the backbone (its ``prefix`` decides how many latents block 0 holds).
        block: macro-block index (any, streams are unbounded).
        video_latent: ``(C, h, w)`` of one video latent, or ``None`` for audio-only models.
        audio_latent: ``(C,)`` of one audio latent, or ``None`` for video-only models.
    """
    def count(rate: int) -> int:
        return block_start(block + 1, network.prefix, rate) - block_start(block, network.prefix, rate)

    return BlockShape(None if video_latent is None else (count(3), *video_latent),
                      None if audio_latent is None else (count(25), *audio_latent))


def block_noise(shape: BlockShape, batch_size: int, generator: torch.Generator | None, device: torch.device,
                dtype: torch.dtype = torch.float32) -> AVLatents:
    """Fresh standard-normal latents for one block."""
    def draw(dims: tuple[int, ...] | None) -> Tensor | None:
        if dims is None:
            return None
        return fresh_noise(torch.empty((batch_size, *dims), device=device, dtype=dtype), generator)

    return AVLatents(draw(shape.video), draw(shape.audio))


@dataclass(frozen=True)
class BlockGuidance:
    """Classifier-free guidance in the block loop: the unconditional branch has its own text context and cache.

    Args:
        null_text: context of the null prompt (``network.encode_text(captions, drop=all True)``); every call on
            ``null_cache`` passes this same object.
        null_cache: KV cache whose history was computed with ``null_text``.
        video_scale: CFG scale of video (``omniforcing.diffusion.guidance`` convention, 1 = none).
        audio_scale: CFG scale of audio.
    """

    null_text: TextContext
    null_cache: AVKVCache
    video_scale: float = 1.0
    audio_scale: float = 1.0


def _cached_velocity(network: nn.Module, x: AVLatents, t: AVLatents, text: TextContext, cache: AVKVCache,
                     block: int, step_size: Tensor | None, commit: bool = False,
                     checkpointed: bool = False) -> AVLatents:
    """One cached backbone call; ``t`` holds one ``(B,)`` time per present modality."""
    tt = x.zip_map(t, lambda m, tm: tm[:, None].to(m.device).expand(m.shape[0], m.shape[1]))
    args = (x.video, x.audio, tt.video, tt.audio, text)
    kwargs = dict(block=block, commit=commit, step_size=step_size)
    if checkpointed:
        video, audio = checkpoint_cached_forward(network, *args, cache=cache, **kwargs)
    else:
        video, audio = network(*args, cache=cache, **kwargs)
    return AVLatents(video, audio)


def _guided_velocity(network: nn.Module, x: AVLatents, t: AVLatents, text: TextContext, cache: AVKVCache,
                     block: int, step_size: Tensor | None, guidance: BlockGuidance | None,
                     checkpointed: bool = False) -> AVLatents:
    cond = _cached_velocity(network, x, t, text, cache, block, step_size, checkpointed=checkpointed)
    if guidance is None:
        return cond
    uncond = _cached_velocity(network, x, t, guidance.null_text, guidance.null_cache, block, step_size)
    return AVLatents(
        None if cond.video is None else classifier_free_guidance(cond.video, uncond.video, guidance.video_scale),
        None if cond.audio is None else classifier_free_guidance(cond.audio, uncond.audio, guidance.audio_scale),
    )


def modality_times(noise: AVLatents, times: list[float], audio_times: list[float] | None) -> dict[str, list[float]]:
    """Few-step times per present modality (``audio_times=None``: audio uses ``times`` too)."""
    schedule = {"video": [float(t) for t in times],
                "audio": [float(t) for t in (times if audio_times is None else audio_times)]}
    schedule = {name: schedule[name] for name, _ in noise.items()}
    for name, values in schedule.items():
        if not values or min(values) <= 0.0 or any(b >= a for a, b in zip(values, values[1:])):
            raise ValueError(f"{name} few-step times must be non-empty, decreasing and > 0, got {values}")
    return schedule


def denoise_block(network: nn.Module, text: TextContext, cache: AVKVCache, block: int, noise: AVLatents,
                  times: list[float], *, step_size: Tensor | None = None, generator: torch.Generator | None = None,
                  grad_step: int | None = None, checkpoint_grad_step: bool = True,
                  audio_times: list[float] | None = None, guidance: BlockGuidance | None = None) -> AVLatents:
    """Few-step denoising of one block against the cached history (the cache is not modified).

    Implements the inner loop of Self-Forcing (ALGORITHMS.md §5.2): ``x0 = x - t_k v``; re-noise with fresh noise
    to ``t_{k+1}``; the last step returns ``x0``.

    Asymmetric steps (``audio_times`` differing from ``times``): the block runs ``max(len(times),
    len(audio_times))`` joint forwards, both schedules starting at the first. A modality whose schedule has
    ended is held at its clean estimate at ``t = 0`` (exactly what the commit forward will store), so the
    other modality keeps attending to the finished result; its outputs are discarded. A joint forward cannot
    drop a modality (that would also drop cross-modal attention), so this saves no backbone compute against
    the longer schedule; it sets each modality's sampling schedule.

    Args:
        network: causal backbone.
        text: text context (the same object for every call on ``cache``).
        cache: committed history; ``cache.next_block`` must equal ``block``.
        block: macro-block index.
        noise: pure noise of the block's shape (:func:`block_noise`).
        times: few-step times, decreasing, all ``> 0`` (video, and audio unless ``audio_times`` is given).
        step_size: ``(B,)`` mode conditioning for step-size-conditioned models (Mutual Forcing).
        generator: source of the re-noising noise (drawn video first, then audio, at each step).
        grad_step: when given, steps before it run under ``no_grad``, this step runs with gradient and its
            ``x0`` is returned at once (Self-Forcing's random exit step); when ``None`` every step runs in the
            caller's grad mode. Not combinable with ``audio_times`` or ``guidance``.
        checkpoint_grad_step: activation-checkpoint the gradient step with the cache snapshotted.
        audio_times: few-step times of audio when they differ from ``times``.
        guidance: classifier-free guidance with a second cache (:class:`BlockGuidance`).

    Returns:
        The block's clean estimate (``(B, Tv_k, C, h, w)`` / ``(B, Ta_k, C)``).
    """
    if grad_step is not None and (audio_times is not None or guidance is not None):
        raise ValueError("grad_step (training) cannot be combined with audio_times or guidance")
    schedule = modality_times(noise, times, audio_times)
    if grad_step is not None and not 0 <= grad_step < len(times):
        raise ValueError(f"grad_step {grad_step} outside the {len(times)} denoising steps")
    x = dict(noise.items())
    clean: dict[str, Tensor] = {}
    batch, device = noise.batch_size, noise.items()[0][1].device
    for k in range(max(len(values) for values in schedule.values())):
        t = {name: values[k] if k < len(values) else 0.0 for name, values in schedule.items()}
        inputs = AVLatents(*(_step_input(name, k, schedule, x, clean) for name in ("video", "audio")))
        t_now = AVLatents(*(None if name not in t else torch.full((batch,), t[name], device=device)
                            for name in ("video", "audio")))
        with torch.set_grad_enabled(torch.is_grad_enabled() and (grad_step is None or k == grad_step)):
            v = _guided_velocity(network, inputs, t_now, text, cache, block, step_size, guidance,
                                 checkpointed=grad_step == k and checkpoint_grad_step and torch.is_grad_enabled())
            x0 = {name: x0_from_velocity(m, vm, tm) for (name, m), (_, vm), (_, tm)
                  in zip(inputs.items(), v.items(), t_now.items()) if k < len(schedule[name])}
        if k == grad_step:
            return AVLatents(x0.get("video"), x0.get("audio"))
        for name, estimate in x0.items():  # video before audio: the order of the noise draws
            if k == len(schedule[name]) - 1:
                clean[name] = estimate
            else:
                t_next = torch.full((batch,), schedule[name][k + 1], device=device)
                x[name] = add_noise(estimate.detach(), fresh_noise(estimate, generator), t_next)
    return AVLatents(clean.get("video"), clean.get("audio"))


def _step_input(name: str, k: int, schedule: dict[str, list[float]], x: dict[str, Tensor],
                clean: dict[str, Tensor]) -> Tensor | None:
    """The modality's noisy state while its schedule runs, its clean estimate after (``None`` if absent)."""
    if name not in schedule:
        return None
    return x[name] if k < len(schedule[name]) else clean[name].detach()


@torch.no_grad()
def commit_block(network: nn.Module, text: TextContext, cache: AVKVCache, block: int, x0: AVLatents, *,
                 context_time: float = 0.0, step_size: Tensor | None = None,
                 generator: torch.Generator | None = None, guidance: BlockGuidance | None = None) -> None:
    """Write the block's clean output into the cache (clean-context refresh, ALGORITHMS.md §5.2).

    The block is re-noised to ``context_time`` (0 = exactly clean) and run once with ``commit=True``; the cache
    stores detached keys/values, so no gradient ever flows into the past. With ``guidance`` the same input is
    also committed to the unconditional branch's cache (with the null text).
    """
    x0 = x0.detach()
    batch, device = x0.batch_size, x0.items()[0][1].device
    time = torch.full((batch,), float(context_time), device=device)
    t = x0.map(lambda _: time)
    if context_time > 0:
        x0 = x0.map(lambda m: add_noise(m, fresh_noise(m, generator), time))
    _cached_velocity(network, x0, t, text, cache, block, step_size, commit=True)
    if guidance is not None:
        _cached_velocity(network, x0, t, guidance.null_text, guidance.null_cache, block, step_size, commit=True)
