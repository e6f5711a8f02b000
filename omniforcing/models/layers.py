"""Building blocks of the dual-stream transformer: norms, AdaLN helpers, timestep embedding, MLP, attention.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels: flash / cuDNN where no mask is
needed, memory-efficient with a mask), as in the OmniForcing code after it dropped FlexAttention for numerical
issues (ALGORITHMS.md §5.1). Masks are built once per layout (additive:
:func:`~omniforcing.models.layout.additive_masks`) or not at all: a streamed one-block call sees all of its
cached history and needs none. Measured on this CPU (video self-attention of a 10-s clip, 496 tokens, 4
heads of 32, one thread): SDPA with the boolean mask 2.4 ms; FlexAttention with the equivalent block mask 42 ms eager and 9.6 ms compiled (after 34 s of
compilation), equal to 5e-7. So SDPA is the one kernel (FlexAttention was not measured on a GPU: none was
available).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniforcing.models.rope import RopeTables, apply_rope


class KV(NamedTuple):
    """Keys and values of one attention, ``(B, heads, N, head_dim)`` each."""

    key: Tensor
    value: Tensor


class CachedKV(NamedTuple):
    """Cached keys and values in storage with spare room: the first ``length`` tokens are the history.

    The spare room lets a no-grad call write its current keys/values after the history and attend over one
    contiguous view instead of concatenating (no history copy per denoising step). Nothing below ``length``
    is ever written after the commit that created the storage, so snapshots stay valid.
    """

    key: Tensor
    value: Tensor
    length: int

    def valid(self) -> KV:
        """The history, ``(B, heads, length, head_dim)`` views."""
        return KV(self.key[:, :, : self.length], self.value[:, :, : self.length])


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension (``F.rms_norm``, fused).

    Args:
        dim: normalised width.
        affine: learn a per-channel scale (initialised to 1).
        eps: added to the mean square.
    """

    def __init__(self, dim: int, affine: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)


def per_frame(x: Tensor, frames: int) -> Tensor:
    """View tokens ``(B, frames * g, D)`` as ``(B, frames, g, D)`` so per-frame modulation broadcasts."""
    return x.unflatten(1, (frames, -1))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN: ``x * (1 + scale) + shift`` with per-frame ``shift, scale`` ``(B, T, D)`` over ``x`` ``(B, T*g, D)``."""
    frames = shift.shape[1]
    return (per_frame(x, frames) * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def gated(x: Tensor, gate: Tensor) -> Tensor:
    """``x * gate`` with a per-frame gate ``(B, T, D)`` over ``x`` ``(B, T*g, D)``."""
    return (per_frame(x, gate.shape[1]) * gate[:, :, None]).flatten(1, 2)


@functools.lru_cache(maxsize=32)
def _frequencies(half: int, max_period: float, device: torch.device) -> Tensor:
    """``(half,)`` geometric frequencies, made once per device (not per forward; outside inference mode so
    training may reuse them)."""
    with torch.inference_mode(False):
        return torch.exp(-math.log(max_period) * torch.arange(half, device=device, dtype=torch.float32) / half)


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``(..., dim)`` float32 sin/cos features of ``values`` (DDPM / PixArt timestep features)."""
    args = values.float()[..., None] * _frequencies(dim // 2, max_period, values.device)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Scalar per token -> width ``D``: sinusoidal features of ``1000 * value`` through a 2-layer MLP.

    Args:
        width: output width.
        features: sinusoidal feature count.
    """

    def __init__(self, width: int, features: int = 256) -> None:
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, values: Tensor) -> Tensor:
        """``values`` ``(B, T)`` (flow time in ``[0, 1]`` or a step size) -> ``(B, T, width)``."""
        feats = sinusoidal_embedding(1000 * values, self.features)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class FeedForward(nn.Module):
    """``Linear -> GELU(tanh) -> Linear`` with hidden width ``ratio * width``."""

    def __init__(self, width: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * ratio)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head attention split into projection and attention steps, so keys can come from a cache.

    Queries and keys get a per-head RMSNorm (QK-norm, as LTX-2) before RoPE.

    Args:
        query_dim: width of the query tokens (and of the output).
        key_dim: width of the key/value source tokens.
        inner_dim: attention width (``heads * head_dim``).
        heads: number of heads.
    """

    def __init__(self, query_dim: int, key_dim: int, inner_dim: int, heads: int) -> None:
        super().__init__()
        if inner_dim % heads:
            raise ValueError(f"attention width {inner_dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = inner_dim // heads
        self.to_q = nn.Linear(query_dim, inner_dim)
        self.to_k = nn.Linear(key_dim, inner_dim)
        self.to_v = nn.Linear(key_dim, inner_dim)
        self.to_out = nn.Linear(inner_dim, query_dim)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def queries(self, x: Tensor, rope: RopeTables | None = None) -> Tensor:
        """``(B, N, query_dim)`` -> ``(B, heads, N, head_dim)``, normalised and rotated."""
        q = self.q_norm(self._heads(self.to_q(x)))
        return q if rope is None else apply_rope(q, rope)

    def keys_values(self, x: Tensor, rope: RopeTables | None = None) -> KV:
        """``(B, N, key_dim)`` -> keys (normalised, rotated) and values, ``(B, heads, N, head_dim)``."""
        k = self.k_norm(self._heads(self.to_k(x)))
        return KV(k if rope is None else apply_rope(k, rope), self._heads(self.to_v(x)))

    def attend(self, q: Tensor, kv: KV, mask: Tensor | None = None) -> Tensor:
        """Scaled dot-product attention and the output projection -> ``(B, N, query_dim)``.

        Args:
            q: ``(B, heads, Q, head_dim)``.
            kv: keys and values ``(B, heads, K, head_dim)``.
            mask: broadcastable to ``(B, heads, Q, K)``: bool (True = attend) or additive float (0 / -inf);
                ``None`` = attend to all (the flash / cuDNN-eligible case).
        """
        if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # autocast: queries in a lower precision than the cached additive mask
        out = F.scaled_dot_product_attention(q, kv.key, kv.value, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).flatten(2))
