"""The dual-stream audio-video transformer every method shares (DESIGN.md "Model"; ALGORITHMS.md §1, §6).

One class serves the bidirectional teacher, every OmniForcing stage, the critic and Mutual Forcing:
bidirectional vs block-causal attention, sinks, prefix layout, video-only / audio-only / joint inputs, full
sequences vs block-by-block decoding with an :class:`~omniforcing.models.kv_cache.AVKVCache` are all
configuration or call arguments of the same weights.

Tokens: a video latent frame ``(Cv, h, w)`` gives ``h * w`` tokens (patch 1, linear in-projection); an audio
latent gives one token. ``num_audio_sinks`` learnable tokens (init N(0, 0.02²)) are prepended to the audio
sequence: they belong to block 0, take the first audio latent's timestep, have identity RoPE, are visible to
every query and are dropped before the output head. The output is the flow velocity ``v = eps - x0`` in the
input's shape.

A forward is host bookkeeping (input checks, the call's layout, the cache's memoised plan of the block, RoPE
tables from the memoised geometry, and after a commit ``cache.advance``) around :meth:`DualStreamTransformer.core`,
the tensor work, which makes no host synchronisation and changes no host state: :meth:`compile_core` compiles
its layers, one compiled function shared by every layer (CUDA graphs with ``mode="reduce-overhead"``; issue 12).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from omniforcing.models.call_rules import cache_plan, check_inputs, full_masks
from omniforcing.models.geometry import SinkRope, TokenGeometry
from omniforcing.models.kv_cache import AVKVCache, CachePlan, PrefixPosition
from omniforcing.models.layers import KV, RMSNorm, TimestepEmbedding, modulate
from omniforcing.models.parameter_groups import GroupRules, match_group
from omniforcing.models.layout import (
    AttentionMasks,
    BlockLayout,
    PrefixLayout,
    to_additive,
    visibility_masks,
)
from omniforcing.models.ring import AUDIO_KINDS, VIDEO_KINDS, gather
from omniforcing.models.rope import RotaryEmbedding
from omniforcing.models.stream_layer import NUM_MODULATIONS, DualStreamLayer, LayerCall, LayerKV, StreamCall, TextKV
from omniforcing.models.text import ByteTextEncoder, StreamText, TextContext, TextEncoder

PARAMETER_GROUPS: GroupRules = (("sink", "sinks"), ("cross_attn", "cross"), ("text", "text"), ("video", "video"),
                                ("audio", "audio"))
"""First match wins: a stream's cross-modal attention is ``cross`` before it is ``video``; a stream's text
attention is ``text``."""


class StreamEnds(nn.Module):
    """One stream's input projection, timestep conditioning, text path and velocity head.

    Args:
        channels: latent channels of the stream.
        width: stream width.
        text: the stream's text path.
        step_size_conditioning: add an embedding of the sampler step size to the timestep conditioning.
        num_sinks: learnable sink tokens (audio only).
    """

    def __init__(self, channels: int, width: int, text: StreamText, step_size_conditioning: bool,
                 num_sinks: int = 0) -> None:
        super().__init__()
        self.proj_in = nn.Linear(channels, width)
        self.time = TimestepEmbedding(width)
        self.step = TimestepEmbedding(width) if step_size_conditioning else None
        if self.step is not None:  # zero last layer: enabling it on a trained model changes nothing until trained
            nn.init.zeros_(self.step.mlp[-1].weight)
            nn.init.zeros_(self.step.mlp[-1].bias)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, NUM_MODULATIONS * width))
        nn.init.zeros_(self.modulation[1].weight)  # adaLN-Zero: every gate starts at 0
        nn.init.zeros_(self.modulation[1].bias)
        self.text = text
        self.sinks = nn.Parameter(torch.randn(num_sinks, width) * 0.02) if num_sinks else None
        self.head_norm = RMSNorm(width, affine=False)
        self.head_modulation = nn.Parameter(torch.zeros(2, width))
        self.proj_out = nn.Linear(width, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def condition(self, t: Tensor, step_size: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-frame timestep embedding ``(B, T, D)`` and global AdaLN values ``(B, T, 11, D)`` for ``t (B, T)``."""
        emb = self.time(t)
        if self.step is not None:
            emb = emb + self.step(step_size[:, None])
        return emb, self.modulation(emb).unflatten(-1, (NUM_MODULATIONS, -1))

    def head(self, x: Tensor, emb: Tensor) -> Tensor:
        """Velocity ``(B, N, channels)`` from tokens ``(B, N, D)`` and per-frame embeddings ``(B, T, D)``."""
        shift, scale = (self.head_modulation[None, None] + emb[:, :, None]).unbind(2)
        return self.proj_out(modulate(self.head_norm(x), shift, scale))


class DualStreamTransformer(nn.Module):
    """Dual-stream (video + audio) diffusion transformer predicting flow velocities.

    Args:
        video_channels: channels ``Cv`` of a video latent frame.
        video_grid: ``(h, w)`` tokens per video latent frame (also the spatial RoPE scale).
        audio_channels: channels ``Ca`` of an audio latent.
        video_width: video stream width.
        audio_width: audio stream width (also the cross-modal attention width, as LTX-2).
        depth: number of dual-stream layers.
        video_heads: video attention heads.
        audio_heads: audio (and cross-modal) attention heads.
        text_encoder: a caption encoder shared by both streams (e.g. a user's pretrained encoder); ``None``
            builds one :class:`~omniforcing.models.text.ByteTextEncoder` per stream.
        text_width: width of the built-in encoders.
        text_depth: layers of the built-in encoders.
        text_heads: heads of the built-in encoders.
        text_max_length: caption tokens of the built-in encoders.
        mlp_ratio: MLP hidden width over the stream width.
        num_audio_sinks: learnable audio sink tokens (0 disables; the paper uses 16).
        prefix: macro-block layout of block 0, ``"v1"`` (paper) or ``"v2"`` (official code).
        causal: default attention of a full-sequence forward (block-causal when True).
        step_size_conditioning: condition on the sampler step size (Mutual Forcing's mode signal).
        rope_max_seconds: seconds that map to the top of the temporal RoPE range (trained length).
        rope_base: ratio between the highest and lowest RoPE frequency.
        prefix_position: ``"absolute"`` or ``"relative"`` placement of the pinned prefix when a cached
            stream has moved past its window (see :mod:`omniforcing.models.kv_cache`).
        sink_rope: ``"identity"`` (the paper's identity RoPE for sinks) or ``"position0"`` (sinks rotated as
            a token at time 0; the OmniForcing ablation "sinks with RoPE").
    """

    def __init__(self, *, video_channels: int = 16, video_grid: tuple[int, int] = (4, 4), audio_channels: int = 32,
                 video_width: int, audio_width: int, depth: int, video_heads: int, audio_heads: int,
                 text_encoder: TextEncoder | None = None, text_width: int = 64, text_depth: int = 2,
                 text_heads: int = 4, text_max_length: int = 64, mlp_ratio: float = 4.0, num_audio_sinks: int = 0,
                 prefix: PrefixLayout = "v1", causal: bool = False, step_size_conditioning: bool = False,
                 rope_max_seconds: float = 20.0, rope_base: float = 10000.0,
                 prefix_position: PrefixPosition = "absolute", sink_rope: SinkRope = "identity") -> None:
        super().__init__()
        if prefix not in ("v1", "v2"):
            raise ValueError(f"prefix must be 'v1' or 'v2', got {prefix!r}")
        if prefix_position not in ("absolute", "relative"):
            raise ValueError(f"prefix_position must be 'absolute' or 'relative', got {prefix_position!r}")
        if num_audio_sinks < 0:
            raise ValueError(f"num_audio_sinks must be >= 0, got {num_audio_sinks}")
        self.video_grid = tuple(video_grid)
        self.video_channels, self.audio_channels = video_channels, audio_channels
        self.prefix, self.causal, self.prefix_position = prefix, causal, prefix_position
        self.num_audio_sinks = num_audio_sinks
        self.text_encoder = text_encoder
        encoder_width = text_encoder.width if text_encoder is not None else text_width

        def stream_text(width: int) -> StreamText:
            own = None if text_encoder is not None else ByteTextEncoder(text_width, text_depth, text_heads,
                                                                        text_max_length)
            return StreamText(width, encoder_width, own)

        self.video = StreamEnds(video_channels, video_width, stream_text(video_width), step_size_conditioning)
        self.audio = StreamEnds(audio_channels, audio_width, stream_text(audio_width), step_size_conditioning,
                                num_audio_sinks)
        self.layers = nn.ModuleList(DualStreamLayer(video_width, audio_width, video_heads, audio_heads, mlp_ratio)
                                    for _ in range(depth))
        self._grid = BlockLayout(1, 1, prefix)
        self._compiled_layer, self._compile_mode = None, None
        self.geometry = TokenGeometry(prefix, self.video_grid,
                                      RotaryEmbedding(video_width // video_heads, (rope_max_seconds, *self.video_grid),
                                                      rope_base),
                                      RotaryEmbedding(audio_width // audio_heads, (rope_max_seconds,), rope_base),
                                      sink_rope)

    # ---------------------------------------------------------------- public helpers
    @property
    def step_size_conditioning(self) -> bool:
        """Whether the model conditions on the sampler step size."""
        return self.video.step is not None

    def layout(self, num_video: int | None = None, num_audio: int | None = None) -> BlockLayout:
        """The :class:`BlockLayout` of a clip under this model's prefix layout."""
        return BlockLayout.for_latents(num_video, num_audio, self.prefix)

    def encode_text(self, captions: list[str], drop: Tensor | None = None) -> TextContext:
        """Encode ``B`` captions for both streams; rows where ``drop`` ``(B,)`` bool is True get the null embedding."""
        shared = self.text_encoder(captions) if self.text_encoder is not None else None
        return TextContext(self.video.text(captions, shared, drop), self.audio.text(captions, shared, drop))

    def new_cache(self, batch_size: int, *, window_seconds: float | None = None,
                  audio_window_seconds: float | None = None,
                  prefix_position: PrefixPosition | None = None) -> AVKVCache:
        """An empty cache for block-by-block decoding of ``batch_size`` streams.

        Args:
            batch_size: streams decoded together.
            window_seconds: video window in whole seconds (``None`` = never evict).
            audio_window_seconds: audio window (``None`` = same as ``window_seconds``).
            prefix_position: override of :attr:`prefix_position` for this cache (``None`` = the model's).
        """
        return AVKVCache(self.depth, batch_size, window_seconds=window_seconds,
                         audio_window_seconds=audio_window_seconds,
                         prefix_position=prefix_position or self.prefix_position)

    @property
    def device(self) -> torch.device:
        """Device of the weights (:class:`~omniforcing.models.protocol.AVBackbone`)."""
        return self.video.proj_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights."""
        return self.video.proj_in.weight.dtype

    @property
    def depth(self) -> int:
        """Number of dual-stream layers."""
        return len(self.layers)

    # ---------------------------------------------------------------- forward
    def forward(self, video: Tensor | None, audio: Tensor | None, t_video: Tensor | None, t_audio: Tensor | None,
                text: TextContext, *, causal: bool | None = None, cache: AVKVCache | None = None, block: int = 0,
                commit: bool = False, step_size: Tensor | None = None, window_seconds: float | None = None,
                audio_window_seconds: float | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Predict velocities for noisy latents.

        Args:
            video: ``(B, Tv, Cv, h, w)`` noisy video latents, or ``None`` (audio-only).
            audio: ``(B, Ta, Ca)`` noisy audio latents, or ``None`` (video-only).
            t_video: ``(B, Tv)`` flow time in ``[0, 1]`` per latent frame (1 = pure noise).
            t_audio: ``(B, Ta)`` flow time per audio latent.
            text: from :meth:`encode_text`, batch ``B``.
            causal: block-causal mask (True) or bidirectional (False); ``None`` = the constructor's setting.
                A cached call is always block-causal.
            cache: decode incrementally against this cache: the inputs are the latents of blocks
                ``block .. block + m - 1`` (the last may be a partial tail); they attend to the cached history
                and block-causally to each other.
            block: with a cache, the macro-block index of the first input block (must equal ``cache.next_block``).
            commit: with a cache, append this call's keys/values (detached) and evict by the cache's window.
            step_size: ``(B,)`` sampler step size, required iff the model has ``step_size_conditioning``.
            window_seconds: full-sequence block-causal forward only: local window of video keys in seconds.
            audio_window_seconds: the same for audio keys (``None`` = ``window_seconds``).

        Returns:
            ``(video velocity, audio velocity)`` in the shapes of ``video`` and ``audio`` (``None`` where absent).
        """
        batch, num_video, num_audio = check_inputs(self, video, audio, t_video, t_audio, text, step_size)
        plan = None
        if cache is None:
            if block or commit:
                raise ValueError("block and commit are only meaningful with a cache")
            layout = self.layout(num_video or None, num_audio or None)
            masks = full_masks(self, layout, causal, window_seconds, audio_window_seconds)
        else:
            if causal is False or window_seconds is not None or audio_window_seconds is not None:
                raise ValueError("a cached call is block-causal with the cache's window; do not pass causal=False "
                                 "or window_seconds")
            cache.check_call(block, video is not None, audio is not None, batch)
            layout = self.layout(self._grid.video_start(block) + num_video if num_video else None,
                                 self._grid.audio_start(block) + num_audio if num_audio else None)
            plan = cache_plan(self, cache, layout, block, num_video > 0, num_audio > 0)
            masks = None if layout.num_blocks - block > 1 else AttentionMasks()  # one block: all history visible
        call, _, _ = self._call(layout, block, num_video, num_audio, masks, cache, plan)
        with_sinks = audio is not None and block == 0 and self.num_audio_sinks > 0
        text_kv = (self._text_kv(text) if cache is None
                   else cache.text_kv(text, lambda: self._text_kv(text, padded=True)))
        if commit:
            self._allocate_history(plan, batch, num_video > 0, num_audio > 0)
        args = (video, audio, t_video, t_audio, step_size, text_kv, call, plan, with_sinks, commit)
        out = self.core(*args) if self._compiled_layer is None else self._run_compiled(*args)
        if commit:
            cache.advance(plan)  # host bookkeeping of the commit, outside the (compilable) tensor work
        return out

    def _allocate_history(self, plan: CachePlan, batch: int, has_video: bool, has_audio: bool) -> None:
        """Allocate the cache's ring storage before the first commit, on the host side of a forward.

        Allocation (and marking the storage as a static address for CUDA graphs) cannot happen inside
        :meth:`core`: ``torch.compile`` refuses to trace ``mark_static_address`` (measured on an H200), and a
        captured graph must only ever write storage that outlives it."""
        attention = {"video_self": lambda layer: layer.video.self_attn,
                     "audio_self": lambda layer: layer.audio.self_attn,
                     "audio_to_video": lambda layer: layer.video.cross_attn,
                     "video_to_audio": lambda layer: layer.audio.cross_attn}
        produced = {"video_self": has_video, "audio_self": has_audio,
                    "audio_to_video": has_video and has_audio, "video_to_audio": has_video and has_audio}
        weight = self.video.proj_in.weight
        for history, kinds in ((plan.video, VIDEO_KINDS), (plan.audio, AUDIO_KINDS)):
            if history is None:
                continue
            for index, layer in enumerate(self.layers):
                for kind in kinds:
                    if produced[kind] and not history.ring.allocated(index, kind):
                        module = attention[kind](layer)
                        empty = weight.new_empty(batch, module.heads, 0, module.head_dim)
                        history.ring.allocate(index, kind, KV(empty, empty))

    def core(self, video: Tensor | None, audio: Tensor | None, t_video: Tensor | None, t_audio: Tensor | None,
             step_size: Tensor | None, text_kv: list[TextKV], call: LayerCall, plan: CachePlan | None,
             with_sinks: bool, commit: bool) -> tuple[Tensor | None, Tensor | None]:
        """The tensor work of :meth:`forward` once its geometry (``call``) and cache plan are known: embeddings,
        layers, the commit's stores, heads. No host synchronisation and no host-side state changes, so it can
        be compiled and replayed as a CUDA graph (:meth:`compile_core`)."""
        xv, ev, mv = self._embed_video(video, t_video, step_size)
        xa, ea, ma = self._embed_audio(audio, t_audio, step_size, with_sinks)
        xv, xa, current = self._run_layers(xv, xa, mv, ma, text_kv, call, plan)
        if commit:
            AVKVCache.store(plan, current)
        return self._video_out(xv, ev, video), self._audio_out(xa, ea, with_sinks)

    @property
    def compiled(self) -> bool:
        """Whether forwards run compiled layers (:meth:`compile_core`)."""
        return self._compiled_layer is not None

    def compile_core(self, enabled: bool = True, mode: str | None = None, backend: str = "inductor") -> None:
        """Run every layer of :meth:`core` through one ``torch.compile``d layer function in every later forward
        (``enabled=False``: eager again). Embeddings, heads and the commit's stores stay eager (a few ops).

        The same attention path serves full-sequence forwards (the teacher's whole-clip sampler, training
        forwards, with autograd) and cached streaming calls; one graph per call geometry, and a streamed
        block's geometry is fixed once the cache window is full. ``mode="reduce-overhead"`` replays CUDA graphs,
        one per layer call (the heads run eager on the last one's output, so callers may keep what a forward
        returns across calls).

        Args:
            enabled: compile (True) or go back to eager.
            mode: ``torch.compile`` mode (``None``, ``"reduce-overhead"``, ``"max-autotune"``...).
            backend: ``torch.compile`` backend.
        """
        if not enabled:
            self._compiled_layer, self._compile_mode = None, None
            return
        # Regional compilation: one compiled function for the dual-stream layer, which every layer of the stack
        # reuses (parameters are graph inputs), instead of one graph of the whole unrolled stack. Compilation
        # time is what decides whether capture pays at all: the whole base-preset core took ~15 s per graph to
        # trace on a CPU host and a captured stream needs several graphs (measured: its first stream did not
        # finish within 130 s on an H200 machine); a layer is a twelfth of that.
        # Automatic dynamic shapes (dynamic=None): the first change of a history length recompiles once with that
        # length symbolic, so the set of graphs stays bounded however long the window is (measured on a guided
        # stream with a 10-s window: 6 compilations against 22 with dynamic=False, one per history length).
        # CUDA graphs are still recorded per concrete shape (cheap); once the window is full no shape changes.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        # the unbound method: every layer, and a deep copy of the model (EMA, serving), runs its own weights through
        # it (torch.compile's ``mode`` belongs to inductor; other backends take none)
        self._compiled_layer = torch.compile(DualStreamLayer.forward, mode=mode if backend == "inductor" else None,
                                             backend=backend, dynamic=None)
        self._compile_mode = mode

    def _run_compiled(self, *args) -> tuple[Tensor | None, Tensor | None]:
        """:meth:`core` with every layer compiled (CUDA graphs with ``reduce-overhead``). The heads run eager on
        the last layer's output, so the velocities returned are ordinary tensors the caller may keep."""
        if self._compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # graph outputs of the previous forward are not read again
        return self.core(*args)

    def parameter_group(self, name: str) -> str:
        """Logging group of a parameter (:mod:`omniforcing.models.parameter_groups`): ``cross`` is the
        audio<->video attention (``layers.N.{video,audio}.cross_attn``; its zero-initialised gates are rows of
        each stream's AdaLN modulation and count with that stream), ``text`` the text encoder and text attention."""
        return match_group(name, PARAMETER_GROUPS, "shared")

    def cache_plan(self, cache: AVKVCache, layout: BlockLayout, block: int, has_video: bool,
                   has_audio: bool) -> CachePlan:
        """The cache's plan of a cached call (:func:`omniforcing.models.call_rules.cache_plan`)."""
        return cache_plan(self, cache, layout, block, has_video, has_audio)

    def _run_layers(self, xv: Tensor | None, xa: Tensor | None, mv: Tensor | None, ma: Tensor | None,
                    text_kv: list[TextKV], call: LayerCall,
                    plan: CachePlan | None) -> tuple[Tensor | None, Tensor | None, list[LayerKV]]:
        current = []
        for index, layer in enumerate(self.layers):
            history = None if plan is None else plan.layer(index)
            args = (xv, xa, mv, ma, text_kv[index], call, history)
            if layer.activation_checkpointing and torch.is_grad_enabled():
                # the recompute runs after later commits overwrote ring slots: hand it a copy of the history
                history = history and {kind: gather(ring_kv) for kind, ring_kv in history.items()}
                xv, xa, kv = checkpoint(layer, *args[:-1], history, use_reentrant=False)
            elif self._compiled_layer is not None:
                xv, xa, kv = self._compiled_layer(layer, *args)
            else:
                xv, xa, kv = layer(*args)
            current.append(kv)
        return xv, xa, current

    def _call(self, layout: BlockLayout, block: int, num_video: int, num_audio: int, masks: AttentionMasks | None,
              cache: AVKVCache | None,
              plan: CachePlan | None = None) -> tuple[LayerCall, Tensor | None, Tensor | None]:
        """The :class:`LayerCall` of inputs starting at ``block`` and their per-token block ids.

        ``masks=None`` asks for masks over ``[history | current]`` keys (several blocks in one cached call), made
        once per cache plan (additive) and reused by every call of that plan.
        """
        device, dtype = self.device, self.dtype
        sinks = self.num_audio_sinks if block == 0 else 0
        video = self.geometry.video(layout.video_start(block), num_video, device, dtype) if num_video else None
        audio = self.geometry.audio(layout.audio_start(block), num_audio, sinks, device, dtype) if num_audio else None
        video_ids = None if video is None else video.blocks
        audio_ids = None if audio is None else audio.blocks
        if masks is None:
            if "masks" not in plan.masks:
                plan.masks["masks"] = to_additive(
                    visibility_masks(video_ids, audio_ids, _cat_ids(cache.video_blocks, video_ids),
                                     _cat_ids(cache.audio_blocks, audio_ids), cache.video_window, cache.audio_window),
                    dtype)
            masks = plan.masks["masks"]
        shift = cache.relative_shift(block) if cache is not None else 0.0
        self_shift, cross_shift = self.geometry.time_shift(shift, device, dtype) if shift else (None, None)
        video_call = None if video is None else StreamCall(video.self_rope, video.cross_rope, self_shift, cross_shift)
        audio_call = None if audio is None else StreamCall(audio.self_rope, audio.cross_rope, cross_shift,
                                                           cross_shift)
        return LayerCall(video_call, audio_call, masks), video_ids, audio_ids

    # ---------------------------------------------------------------- embedding and heads
    def _embed_video(self, video: Tensor | None, t: Tensor | None, step_size: Tensor | None):
        if video is None:
            return None, None, None
        tokens = video.permute(0, 1, 3, 4, 2).flatten(1, 3)  # (B, Tv*h*w, Cv), frame-major, then rows, cols
        emb, mod = self.video.condition(t, step_size)
        return self.video.proj_in(tokens.to(self.video.proj_in.weight.dtype)), emb, mod

    def _embed_audio(self, audio: Tensor | None, t: Tensor | None, step_size: Tensor | None, with_sinks: bool):
        if audio is None:
            return None, None, None
        x = self.audio.proj_in(audio.to(self.audio.proj_in.weight.dtype))
        if with_sinks:
            sinks = self.audio.sinks[None].expand(x.shape[0], -1, -1)
            x = torch.cat([sinks.to(x.dtype), x], dim=1)
            t = torch.cat([t[:, :1].expand(-1, self.num_audio_sinks), t], dim=1)  # sinks take latent 0's time
        emb, mod = self.audio.condition(t, step_size)
        return x, emb, mod

    def _video_out(self, x: Tensor | None, emb: Tensor | None, video: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        out = self.video.head(x, emb)
        _, frames, _, h, w = video.shape
        return out.unflatten(1, (frames, h, w)).permute(0, 1, 4, 2, 3)

    def _audio_out(self, x: Tensor | None, emb: Tensor | None, with_sinks: bool) -> Tensor | None:
        if x is None:
            return None
        skip = self.num_audio_sinks if with_sinks else 0
        return self.audio.head(x[:, skip:], emb[:, skip:])

    def _text_kv(self, text: TextContext, padded: bool = False) -> list[TextKV]:
        """Text keys/values and ``(B, 1, 1, L)`` masks per layer. ``padded`` (a cache's binding): ``L`` padded with
        masked tokens to a power of two, so a prompt switch in a captured stream rarely meets a new shape (a
        new compiled graph); masked keys add exact zeros, so the outputs are the same."""
        tokens, masks = [text.video.tokens, text.audio.tokens], [text.video.mask, text.audio.mask]
        if padded:
            extra = [max(8, 1 << (t.shape[1] - 1).bit_length()) - t.shape[1] for t in tokens]
            tokens = [torch.nn.functional.pad(t, (0, 0, 0, e)) for t, e in zip(tokens, extra)]
            masks = [torch.nn.functional.pad(m, (0, e), value=False) for m, e in zip(masks, extra)]
        video_mask, audio_mask = (m[:, None, None, :] for m in masks)
        return [TextKV(layer.video.text_attn.keys_values(tokens[0]), layer.audio.text_attn.keys_values(tokens[1]),
                       video_mask, audio_mask)
                for layer in self.layers]


def _cat_ids(history: Tensor | None, current: Tensor | None) -> Tensor | None:
    if current is None:
        return None
    return current if history is None else torch.cat([history.to(current.device), current])
