"""The backbone protocol: what every method, the sampling layer and the streaming engine use of a network.

:class:`AVBackbone` is the whole surface that callers outside ``models/`` may touch (issue 13, item 1):
the clip's macro-block layout, an empty KV cache, the forward with per-token flow times / cache / block /
commit, text conditioning, step-size conditioning (Mutual Forcing's mode signal, ALGORITHMS.md §6) and a few
read-only descriptors (latent geometry, prefix layout, device, dtype, depth). Callers never reach into a
backbone's module tree (``network.video.proj_in``, ``network.layers``) and never test for a concrete class,
so a second backbone (e.g. an LTX-2 adapter) plugs in by providing these members.

A backbone is also a ``torch.nn.Module``: training, EMA, checkpoints and export use its ``parameters()``,
``state_dict()``, ``train()`` / ``eval()`` and ``requires_grad_()``. A protocol cannot say "subclass of
nn.Module", so that part is stated here and checked by the callers that need it.

:class:`~omniforcing.models.transformer.DualStreamTransformer` satisfies the protocol
(tests/models/test_protocol.py checks membership and the parameter names of every method).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from omniforcing.models.kv_cache import AVKVCache, PrefixPosition
from omniforcing.models.layout import BlockLayout, PrefixLayout
from omniforcing.models.text import TextContext


@runtime_checkable
class AVBackbone(Protocol):
    """A joint audio-video flow-matching backbone predicting velocities ``v = eps - x0`` (ALGORITHMS.md §1).

    Attributes:
        video_channels: channels ``Cv`` of a video latent frame.
        video_grid: ``(h, w)`` tokens per video latent frame.
        audio_channels: channels ``Ca`` of an audio latent.
        prefix: macro-block layout of block 0, ``"v1"`` or ``"v2"`` (ALGORITHMS.md §2).
        causal: default attention of a full-sequence forward (block-causal when True).
        prefix_position: placement of the pinned prefix once a cached stream has rolled past its window.
        num_audio_sinks: learnable audio sink tokens (0 = none).
    """

    video_channels: int
    video_grid: tuple[int, int]
    audio_channels: int
    prefix: PrefixLayout
    causal: bool
    prefix_position: PrefixPosition
    num_audio_sinks: int

    @property
    def step_size_conditioning(self) -> bool:
        """Whether forwards take a ``step_size`` (Mutual Forcing's mode signal, ALGORITHMS.md §6)."""
        ...

    @property
    def device(self) -> torch.device:
        """Device of the weights; inputs (noise, times, step sizes) are created here."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights."""
        ...

    @property
    def depth(self) -> int:
        """Number of transformer blocks (layers of KV cache a stream holds)."""
        ...

    @property
    def compiled(self) -> bool:
        """Whether forwards run compiled (:meth:`compile_core`)."""
        ...

    def layout(self, num_video: int | None = None, num_audio: int | None = None) -> BlockLayout:
        """The macro-block layout of a clip of ``num_video`` video / ``num_audio`` audio latents."""
        ...

    def encode_text(self, captions: list[str], drop: Tensor | None = None) -> TextContext:
        """Encode ``B`` captions; rows where ``drop`` ``(B,)`` bool is True get the null (unconditional) text."""
        ...

    def new_cache(self, batch_size: int, *, window_seconds: float | None = None,
                  audio_window_seconds: float | None = None,
                  prefix_position: PrefixPosition | None = None) -> AVKVCache:
        """An empty rolling KV cache for block-by-block decoding of ``batch_size`` streams.

        ``window_seconds`` / ``audio_window_seconds``: per-modality windows (``None`` = never evict / same as
        video); ``prefix_position``: override of the backbone's :attr:`prefix_position` (``None`` = keep it).
        """
        ...

    def forward(self, video: Tensor | None, audio: Tensor | None, t_video: Tensor | None, t_audio: Tensor | None,
                text: TextContext, *, causal: bool | None = None, cache: AVKVCache | None = None, block: int = 0,
                commit: bool = False, step_size: Tensor | None = None, window_seconds: float | None = None,
                audio_window_seconds: float | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Velocities for noisy latents.

        Args:
            video: ``(B, Tv, Cv, h, w)`` noisy video latents, or ``None``.
            audio: ``(B, Ta, Ca)`` noisy audio latents, or ``None``.
            t_video: ``(B, Tv)`` flow time per latent frame in ``[0, 1]`` (1 = pure noise).
            t_audio: ``(B, Ta)`` flow time per audio latent.
            text: from :meth:`encode_text`, batch ``B``.
            causal: block-causal (True) or bidirectional (False); ``None`` = the backbone's :attr:`causal`.
            cache: decode blocks ``block ..`` incrementally against this cache (always block-causal).
            block: with a cache, the macro-block index of the first input block.
            commit: with a cache, append this call's keys/values and evict by the cache's window.
            step_size: ``(B,)`` sampler step size, required iff :attr:`step_size_conditioning`.
            window_seconds: full-sequence block-causal forward only: local video window in seconds.
            audio_window_seconds: the same for audio (``None`` = ``window_seconds``).

        Returns:
            ``(video velocity, audio velocity)`` shaped like ``video`` and ``audio`` (``None`` where absent).
        """
        ...

    def __call__(self, video: Tensor | None, audio: Tensor | None, t_video: Tensor | None,
                 t_audio: Tensor | None, text: TextContext, **kwargs) -> tuple[Tensor | None, Tensor | None]:
        """:meth:`forward` (through ``nn.Module.__call__``, so hooks and FSDP wrappers run)."""
        ...

    def compile_core(self, enabled: bool = True, mode: str | None = None, backend: str = "inductor") -> None:
        """Compile the backbone's tensor work for later forwards (``enabled=False``: eager again)."""
        ...

    def parameter_group(self, name: str) -> str:
        """Logging group of the parameter ``name`` (as ``named_parameters`` gives it, wrapper prefixes allowed):
        one of :data:`omniforcing.models.parameter_groups.GROUPS`."""
        ...
