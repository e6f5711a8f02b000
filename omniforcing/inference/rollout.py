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
from omniforcing.diffusion.samplers import fresh_noise
from omniforcing.inference.denoise import per_frame_time
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


def _cached_velocity(network: nn.Module, x: AVLatents, t: Tensor, text: TextContext, cache: AVKVCache, block: int,
                     step_size: Tensor | None, commit: bool = False, checkpointed: bool = False) -> AVLatents:
    tt = per_frame_time(t, x)
    args = (x.video, x.audio, tt.video, tt.audio, text)
    kwargs = dict(block=block, commit=commit, step_size=step_size)
    if checkpointed:
        video, audio = checkpoint_cached_forward(network, *args, cache=cache, **kwargs)
    else:
        video, audio = network(*args, cache=cache, **kwargs)
    return AVLatents(video, audio)


def denoise_block(network: nn.Module, text: TextContext, cache: AVKVCache, block: int, noise: AVLatents,
                  times: list[float], *, step_size: Tensor | None = None, generator: torch.Generator | None = None,
                  grad_step: int | None = None, checkpoint_grad_step: bool = True) -> AVLatents:
    """Few-step denoising of one block against the cached history (the cache is not modified).

    Implements the inner loop of Self-Forcing (ALGORITHMS.md §5.2): ``x0 = x - t_k v``; re-noise with fresh noise
    to ``t_{k+1}``; the last step returns ``x0``.

    Args:
        network: causal backbone.
        text: text context (the same object for every call on ``cache``).
        cache: committed history; ``cache.next_block`` must equal ``block``.
        block: macro-block index.
        noise: pure noise of the block's shape (:func:`block_noise`).
        times: few-step times, decreasing, all ``> 0``.
        step_size: ``(B,)`` mode conditioning for step-size-conditioned models (Mutual Forcing).
        generator: source of the re-noising noise.
        grad_step: when given, steps before it run under ``no_grad``, this step runs with gradient and its
            ``x0`` is returned at once (Self-Forcing's random exit step); when ``None`` every step runs in the
            caller's grad mode.
        checkpoint_grad_step: activation-checkpoint the gradient step with the cache snapshotted.

    Returns:
        The block's clean estimate (``(B, Tv_k, C, h, w)`` / ``(B, Ta_k, C)``).
    """
    if grad_step is not None and not 0 <= grad_step < len(times):
        raise ValueError(f"grad_step {grad_step} outside the {len(times)} denoising steps")
    x = noise
    batch = noise.batch_size
    device = noise.items()[0][1].device
    for k, t_now in enumerate(times):
        t = torch.full((batch,), float(t_now), device=device)
        with_grad = grad_step is None or k == grad_step
        with torch.set_grad_enabled(torch.is_grad_enabled() and with_grad):
            v = _cached_velocity(network, x, t, text, cache, block, step_size,
                                 checkpointed=grad_step == k and checkpoint_grad_step and torch.is_grad_enabled())
            x0 = x.zip_map(v, lambda xm, vm: x0_from_velocity(xm, vm, t))
        if k == len(times) - 1 or k == grad_step:
            return x0
        t_next = torch.full((batch,), float(times[k + 1]), device=device)
        x = x0.map(lambda m: add_noise(m.detach(), fresh_noise(m, generator), t_next))
    raise AssertionError("unreachable")


@torch.no_grad()
def commit_block(network: nn.Module, text: TextContext, cache: AVKVCache, block: int, x0: AVLatents, *,
                 context_time: float = 0.0, step_size: Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
    """Write the block's clean output into the cache (clean-context refresh, ALGORITHMS.md §5.2).

    The block is re-noised to ``context_time`` (0 = exactly clean) and run once with ``commit=True``; the cache
    stores detached keys/values, so no gradient ever flows into the past.
    """
    x0 = x0.detach()
    t = torch.full((x0.batch_size,), float(context_time), device=x0.items()[0][1].device)
    if context_time > 0:
        x0 = x0.map(lambda m: add_noise(m, fresh_noise(m, generator), t))
    _cached_velocity(network, x0, t, text, cache, block, step_size, commit=True)
