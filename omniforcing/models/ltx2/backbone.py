"""LTX-2 (diffusers ``LTX2VideoTransformer3DModel``) as an :class:`~omniforcing.models.protocol.AVBackbone`.

The adapter wraps the diffusers model unchanged (its weights, its blocks, its RoPE and embedding modules) and
runs its own loop over ``transformer.transformer_blocks``, which reproduces the preparation of
``LTX2VideoTransformer3DModel.forward`` (steps cited in the code) and adds what OmniForcing needs, with the mask
semantics and cache policy of :class:`~omniforcing.models.transformer.DualStreamTransformer`
(docs/architecture.md; ALGORITHMS.md §2, §5.3, §6):

* tokens: video ``(B, Tv, C, h, w)`` -> ``(B, Tv*h*w, C)`` frame-major (diffusers' ``_pack_latents`` with patch 1),
  audio ``(B, Ta, C)`` one token per latent; per-token timesteps ``timestep_scale_multiplier * t`` (diffusers
  accepts ``(B, N)`` timesteps); RoPE at absolute positions (:mod:`omniforcing.models.ltx2.coords`);
* bidirectional, cache-free, sink-free: exactly diffusers' forward (tests/models/ltx2/test_parity.py);
* block-causal: the asymmetric macro-block masks of :mod:`omniforcing.models.layout` for video self, audio self,
  audio->video and video->audio attention, optional local windows; ``num_audio_sinks`` learnable tokens
  (N(0, 0.02²)) prepended after ``audio_proj_in``, in block 0, at audio latent 0's time, identity RoPE, visible
  to every query, dropped before the head;
* KV caches: :class:`~omniforcing.models.kv_cache.AVKVCache` (plan / store / advance, as DualStreamTransformer),
  read and written by the attention processors (:mod:`omniforcing.models.ltx2.attention`); keys stored rotated at
  their absolute positions; both prefix policies, ``"absolute"`` and ``"relative"`` (pinned keys rotated
  forward at read time by :meth:`~omniforcing.models.ltx2.coords.TokenCoords.time_shift`, as our backbone);
* single-modality calls run the other stream as a one-latent placeholder with audio<->video attention off
  (diffusers' ``isolate_modalities``), so the present stream does not see it;
* ``step_size_conditioning``: a zero-initialised embedding of the step size added to each stream's timestep
  embedding (before the AdaLN projection and the head), so enabling it on pretrained weights changes nothing
  until trained;
* text: ``encode_text`` delegates to a :class:`~omniforcing.models.ltx2.text.PromptEncoder` (caption features of
  width ``caption_channels``); a cached call without autograd projects the prompt (caption projections, text
  keys/values of every block) once per prompt binding (:meth:`~omniforcing.models.kv_cache.AVKVCache.text_kv`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from torch.utils.checkpoint import checkpoint

from omniforcing.models.kv_cache import AVKVCache, CachePlan, PrefixPosition
from omniforcing.models.layers import KV, TimestepEmbedding
from omniforcing.models.layout import (
    AttentionMasks,
    BlockLayout,
    PrefixLayout,
    block_start,
    to_additive,
    token_blocks,
    visibility_masks,
)
from omniforcing.models.ltx2.attention import BLOCK_KINDS, KIND_MODULES, AttentionCall, bound, install, keys_values
from omniforcing.models.ltx2.config import LTX2Architecture
from omniforcing.models.ltx2.coords import StreamRope, TokenCoords, batched
from omniforcing.models.ltx2.loading import audio_latent_rate, check_supported, load_transformer
from omniforcing.models.ltx2.text import PromptEncoder
from omniforcing.models.parameter_groups import GroupRules, match_group
from omniforcing.models.ring import AUDIO_KINDS, VIDEO_KINDS, gather
from omniforcing.models.stream_layer import LayerKV, TextKV
from omniforcing.models.text import TextContext, TextEmbedding
from omniforcing.models.call_rules import cache_plan, check_inputs, full_masks

class StreamConditioning(NamedTuple):
    """Per-token conditioning of one stream (``LTX2VideoTransformer3DModel.forward`` step 3), ``(B, N, k*D)``:
    AdaLN values, cross-modal scale/shift and gate, and the embedded timestep of the output head."""

    temb: Tensor
    cross_scale_shift: Tensor
    cross_gate: Tensor
    embedded: Tensor


def run_block(block: nn.Module, processors: dict, calls: dict[str, AttentionCall],
              inputs: dict) -> tuple[Tensor, Tensor]:
    """One ``LTX2VideoTransformerBlock`` with ``calls`` bound to its processors (the unit that is checkpointed
    and compiled: the history and masks it reads are its arguments, never state left from an earlier call)."""
    with bound(processors, calls):
        return block(**inputs)

PARAMETER_GROUPS: GroupRules = (
    ("sinks", "sinks"),
    ("audio_to_video_attn", "cross"), ("video_to_audio_attn", "cross"), ("a2v", "cross"), ("v2a", "cross"),
    ("av_cross_attn", "cross"),
    ("text_encoder", "text"), ("caption_projection", "text"), ("attn2", "text"),
    ("audio", "audio"),
)
"""Diffusers' LTX-2 names, first match wins: the a2v/v2a attention and their modulation are ``cross``; the
prompt path (our prompt encoder, the caption projections, each stream's text attention ``attn2``) is ``text``;
names with ``audio`` are the audio stream; the rest (``attn1``, ``ff``, ``proj_in``, ...) is the video stream."""


class LTX2Backbone(nn.Module):
    """LTX-2's audio-video transformer behind the backbone protocol (module docstring).

    Args:
        text_encoder: caption features for the caption projections (``width == caption_channels``), a
            :class:`PromptEncoder` (typed ``nn.Module`` so recipes choose it by ``class_path``: jsonargparse cannot
            match ``nn.Module.__call__`` against the protocol's ``__call__``).
        video_grid: ``(h, w)`` tokens per video latent (LTX-2 at 512x768: ``(16, 24)``).
        pretrained: a local folder holding ``subfolder/config.json`` and weights (Lightricks/LTX-2).
        subfolder: the transformer's folder inside ``pretrained``.
        architecture: random initialisation of this geometry (when no ``pretrained`` folder).
        dtype: dtype of the weights.
        num_audio_sinks: learnable audio sink tokens (0 = none).
        prefix: macro-block layout of block 0, ``"v1"`` or ``"v2"``.
        causal: default attention of a full-sequence forward (block-causal when True).
        prefix_position: ``"absolute"`` or ``"relative"`` placement of the pinned prefix once a cached stream has
            moved past its window (:mod:`omniforcing.models.kv_cache`).
        step_size_conditioning: condition on the sampler step size (Mutual Forcing).
        activation_checkpointing: recompute each block in backward (training forwards).
        fps: video frame rate of the latents (LTX-2: 24), for RoPE and the macro-block layout.
    """

    def __init__(self, *, text_encoder: nn.Module, video_grid: tuple[int, int], pretrained: Path | None = None,
                 subfolder: str = "transformer", architecture: LTX2Architecture | None = None,
                 dtype: Literal["float32", "bfloat16"] = "float32", num_audio_sinks: int = 0,
                 prefix: PrefixLayout = "v1", causal: bool = False, prefix_position: PrefixPosition = "absolute",
                 step_size_conditioning: bool = False, activation_checkpointing: bool = False,
                 fps: int = 24) -> None:
        super().__init__()
        if prefix not in ("v1", "v2"):
            raise ValueError(f"prefix must be 'v1' or 'v2', got {prefix!r}")
        if prefix_position not in ("absolute", "relative"):
            raise ValueError(f"prefix_position must be 'absolute' or 'relative', got {prefix_position!r}")
        if num_audio_sinks < 0:
            raise ValueError(f"num_audio_sinks must be >= 0, got {num_audio_sinks}")
        self.transformer = load_transformer(pretrained, subfolder, architecture, dtype)
        config = self.transformer.config
        check_supported(config)
        if not isinstance(text_encoder, PromptEncoder):
            raise TypeError(f"text_encoder must be a PromptEncoder (width + __call__), got {type(text_encoder)}")
        if text_encoder.width != config.caption_channels:
            raise ValueError(f"the text encoder gives {text_encoder.width}-wide features, the transformer's caption "
                             f"projections take {config.caption_channels}")
        self.text_encoder = text_encoder
        self.video_grid = tuple(video_grid)
        self.video_channels, self.audio_channels = config.in_channels, config.audio_in_channels
        self.prefix, self.causal, self.prefix_position = prefix, causal, prefix_position
        self.num_audio_sinks = num_audio_sinks
        self.activation_checkpointing = activation_checkpointing
        self.fps = fps
        self.temporal_stride = config.vae_scale_factors[0]
        self.audio_rate = audio_latent_rate(config)
        video_width = config.num_attention_heads * config.attention_head_dim
        audio_width = config.audio_num_attention_heads * config.audio_attention_head_dim
        self.audio_sinks = nn.Parameter(torch.randn(num_audio_sinks, audio_width) * 0.02) if num_audio_sinks else None
        self.video_step = _zero_step(video_width) if step_size_conditioning else None
        self.audio_step = _zero_step(audio_width) if step_size_conditioning else None
        self.to(getattr(torch, dtype))
        self._processors = install(self.transformer.transformer_blocks)
        self.coords = TokenCoords(self.transformer, self.video_grid, float(fps))
        self._compiled_block, self._compile_mode = None, None

    # ---------------------------------------------------------------- protocol descriptors
    def parameter_group(self, name: str) -> str:
        """Logging group of a parameter (:data:`PARAMETER_GROUPS`)."""
        return match_group(name, PARAMETER_GROUPS, "video")

    @property
    def step_size_conditioning(self) -> bool:
        """Whether forwards take a ``step_size``."""
        return self.video_step is not None

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.transformer.proj_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights."""
        return self.transformer.proj_in.weight.dtype

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.transformer.transformer_blocks)

    @property
    def compiled(self) -> bool:
        """Whether blocks run compiled (:meth:`compile_core`)."""
        return self._compiled_block is not None

    def layout(self, num_video: int | None = None, num_audio: int | None = None) -> BlockLayout:
        """The macro-block layout of a clip, with LTX-2's rates (``fps / vae_scale_factors[0]`` video latents and
        ``audio_sampling_rate / audio_hop_length / audio_scale_factor`` audio latents per second)."""
        return BlockLayout.for_latents(num_video, num_audio, self.prefix, fps=self.fps,
                                       temporal_stride=self.temporal_stride, audio_rate=self.audio_rate)

    def encode_text(self, captions: list[str], drop: Tensor | None = None) -> TextContext:
        """Caption features of both streams from the prompt encoder (``drop`` rows: the unconditional prompt)."""
        return self.text_encoder(captions, drop)

    def new_cache(self, batch_size: int, *, window_seconds: float | None = None,
                  audio_window_seconds: float | None = None,
                  prefix_position: PrefixPosition | None = None) -> AVKVCache:
        """An empty rolling cache (see :meth:`DualStreamTransformer.new_cache`)."""
        return AVKVCache(self.depth, batch_size, window_seconds=window_seconds,
                         audio_window_seconds=audio_window_seconds,
                         prefix_position=prefix_position or self.prefix_position)

    def compile_core(self, enabled: bool = True, mode: str | None = None, backend: str = "inductor") -> None:
        """Regional compilation: one ``torch.compile``d :func:`run_block` shared by every block (parameters are
        graph inputs), as :meth:`DualStreamTransformer.compile_core`; ``enabled=False``: eager again. Not run on
        GPU hardware by its author."""
        if not enabled:
            self._compiled_block, self._compile_mode = None, None
            return
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self._compiled_block = torch.compile(run_block, mode=mode if backend == "inductor" else None,
                                             backend=backend, dynamic=None)
        self._compile_mode = mode

    # ---------------------------------------------------------------- forward
    def forward(self, video: Tensor | None, audio: Tensor | None, t_video: Tensor | None, t_audio: Tensor | None,
                text: TextContext, *, causal: bool | None = None, cache: AVKVCache | None = None, block: int = 0,
                commit: bool = False, step_size: Tensor | None = None, window_seconds: float | None = None,
                audio_window_seconds: float | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Velocities for noisy latents; arguments and returns as
        :meth:`~omniforcing.models.protocol.AVBackbone.forward` (video ``(B, Tv, C, h, w)``, audio ``(B, Ta, C)``,
        flow times ``(B, Tv)`` / ``(B, Ta)`` in ``[0, 1]``)."""
        # the input rules, mask policy and cache plan every backbone shares (models/call_rules.py)
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
            layout = self.layout(block_start(block, self.prefix, self.fps // self.temporal_stride)
                                 + num_video if num_video else None,
                                 block_start(block, self.prefix, self.audio_rate) + num_audio if num_audio else None)
            plan = cache_plan(self, cache, layout, block, num_video > 0, num_audio > 0)
            masks = (self._history_masks(plan, cache, layout, block, num_video, num_audio)
                     if layout.num_blocks - block > 1 else AttentionMasks())  # one block: all history visible
        with_sinks = audio is not None and block == 0 and self.num_audio_sinks > 0
        # streaming (no autograd): the prompt's keys/values once per binding; with autograd the blocks project it
        # in their own forward, so gradients reach the text path and an FSDP unit projects with its full weights
        text_kv = (None if cache is None or torch.is_grad_enabled()
                   else cache.text_kv(text, lambda: self._text_kv(text)))
        shift = cache.relative_shift(block) if cache is not None else 0.0
        shifts = self.coords.time_shift(shift, self.device) if shift else {}
        if commit:
            self._allocate_history(plan, batch, num_video > 0, num_audio > 0)
        out = self.core(video, audio, t_video, t_audio, text, text_kv, step_size, layout, block, masks, plan,
                        shifts, with_sinks, commit)
        if commit:
            cache.advance(plan)
        return out

    def core(self, video: Tensor | None, audio: Tensor | None, t_video: Tensor | None, t_audio: Tensor | None,
             text: TextContext, text_kv: list[TextKV] | None, step_size: Tensor | None, layout: BlockLayout,
             block: int, masks: AttentionMasks, plan: CachePlan | None, shifts: dict[str, tuple[Tensor, Tensor]],
             with_sinks: bool, commit: bool) -> tuple[Tensor | None, Tensor | None]:
        """The tensor work of :meth:`forward`: embeddings, the block loop, the commit's stores, heads
        (``text_kv``: a cache's text keys/values per block, else the prompt is projected here; ``shifts``: per
        cached kind, the rotation of pinned keys of the "relative" policy)."""
        batch, device = (video if video is not None else audio).shape[0], self.device
        sinks = self.num_audio_sinks if with_sinks else 0
        hw = self.video_grid[0] * self.video_grid[1]
        # a missing stream runs as a one-latent placeholder (cross-modal attention off, its output dropped)
        xv = self.transformer.proj_in(_video_tokens(video, self.dtype) if video is not None
                                      else self._placeholder(batch, hw, self.video_channels))
        xa = self.transformer.audio_proj_in(audio.to(self.dtype) if audio is not None
                                            else self._placeholder(batch, 1, self.audio_channels))
        t_video = t_video if video is not None else torch.zeros(batch, 1, device=device)
        t_audio = t_audio if audio is not None else torch.zeros(batch, 1, device=device)
        if sinks:  # prepended after audio_proj_in, at audio latent 0's time
            xa = torch.cat([self.audio_sinks[None].expand(batch, -1, -1).to(xa.dtype), xa], dim=1)
            t_audio = torch.cat([t_audio[:, :1].expand(-1, sinks), t_audio], dim=1)
        rope_v = self.coords.video(layout.video_start(block) if video is not None else 0, xv.shape[1] // hw, device)
        rope_a = self.coords.audio(layout.audio_start(block) if audio is not None else 0, xa.shape[1] - sinks,
                                   sinks, device)
        cond_v = self._conditioning(t_video, hw, step_size, video=True)
        cond_a = self._conditioning(t_audio, 1, step_size, video=False)
        joint = video is not None and audio is not None
        text_inputs = self._text_inputs(text) if text_kv is None else dict(
            encoder_hidden_states=None, audio_encoder_hidden_states=None)  # the processors read text_kv
        inputs = dict(hidden_states=xv, audio_hidden_states=xa, **text_inputs,
                      **_block_conditioning(cond_v, cond_a), **_block_rope(rope_v, rope_a, batch),
                      use_a2v_cross_attention=joint, use_v2a_cross_attention=joint)
        present = {"video_self": video is not None, "audio_self": audio is not None,
                   "audio_to_video": joint, "video_to_audio": joint}
        xv, xa, current = self._run_blocks(inputs, masks, plan, present, text_kv, shifts)
        if commit:
            AVKVCache.store(plan, current)
        return (None if video is None else self._video_out(xv, cond_v.embedded, video),
                None if audio is None else self._audio_out(xa[:, sinks:], cond_a.embedded[:, sinks:]))

    def _run_blocks(self, inputs: dict, masks: AttentionMasks, plan: CachePlan | None, present: dict[str, bool],
                    text_kv: list[TextKV] | None,
                    shifts: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, list[LayerKV]]:
        """``LTX2VideoTransformer3DModel.forward`` step 5, with this call's history, masks and records bound to
        each block's processors."""
        current = []
        if self._compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # graph outputs of the previous forward are not read again
        for index, (block, processors) in enumerate(zip(self.transformer.transformer_blocks, self._processors)):
            history = {} if plan is None else plan.layer(index)
            checkpointed = self.activation_checkpointing and torch.is_grad_enabled()
            if checkpointed:  # the recompute runs after later commits overwrote ring slots: it gets copies
                history = {kind: gather(ring_kv) for kind, ring_kv in history.items()}
            record: dict[str, KV] = {}
            calls = {kind: AttentionCall(history.get(kind), getattr(masks, kind), record, shift=shifts.get(kind))
                     if present[kind] else AttentionCall() for kind in BLOCK_KINDS}
            if text_kv is not None:
                text = text_kv[index]
                calls["video_text"] = AttentionCall(mask=text.video_mask, keys=text.video)
                calls["audio_text"] = AttentionCall(mask=text.audio_mask, keys=text.audio)
            if checkpointed:
                xv, xa = checkpoint(run_block, block, processors, calls, inputs, use_reentrant=False)
            elif self._compiled_block is not None:
                xv, xa = self._compiled_block(block, processors, calls, inputs)
            else:
                xv, xa = run_block(block, processors, calls, inputs)
            inputs = {**inputs, "hidden_states": xv, "audio_hidden_states": xa}
            current.append(LayerKV(**record))
        return xv, xa, current

    # ---------------------------------------------------------------- preparation (forward steps 2-4)
    def _conditioning(self, t: Tensor, repeat: int, step_size: Tensor | None, video: bool) -> StreamConditioning:
        """Step 3 per latent ``t`` ``(B, T)`` (LTX-2.0: each stream's own timestep also drives its cross-modal
        modulation), expanded to ``repeat`` tokens per latent."""
        model, batch = self.transformer, t.shape[0]
        config = model.config
        time_embed, scale_shift, gate, step = (
            (model.time_embed, model.av_cross_attn_video_scale_shift, model.av_cross_attn_video_a2v_gate,
             self.video_step) if video else
            (model.audio_time_embed, model.av_cross_attn_audio_scale_shift, model.av_cross_attn_audio_v2a_gate,
             self.audio_step))
        timestep = (t * config.timestep_scale_multiplier).flatten()
        # LTX2AdaLayerNormSingle.forward, with the step-size embedding added to the embedded timestep
        embedded = time_embed.emb(timestep, resolution=None, aspect_ratio=None, batch_size=batch,
                                  hidden_dtype=self.dtype).view(batch, t.shape[1], -1)
        if step is not None:
            embedded = embedded + step(step_size[:, None]).to(embedded.dtype)
        temb = time_embed.linear(time_embed.silu(embedded))
        gate_scale = config.cross_attn_timestep_scale_multiplier / config.timestep_scale_multiplier
        cross = scale_shift(timestep, batch_size=batch, hidden_dtype=self.dtype)[0].view(batch, t.shape[1], -1)
        cross_gate = gate(timestep * gate_scale, batch_size=batch, hidden_dtype=self.dtype)[0].view(batch,
                                                                                                    t.shape[1], -1)
        values = (temb, cross, cross_gate, embedded)
        return StreamConditioning(*(v.repeat_interleave(repeat, dim=1) if repeat > 1 else v for v in values))

    def _text_inputs(self, text: TextContext) -> dict:
        """Step 4 (caption projections) and the text masks as diffusers' additive bias ``(B, 1, L)``."""
        model = self.transformer

        def project(features: TextEmbedding, projection: nn.Module | None) -> tuple[Tensor, Tensor]:
            tokens = features.tokens.to(self.dtype)
            tokens = projection(tokens) if projection is not None else tokens
            return tokens, ((1 - features.mask.to(self.dtype)) * -10000.0).unsqueeze(1)

        use = model.config.use_prompt_embeddings
        video, video_mask = project(text.video, model.caption_projection if use else None)
        audio, audio_mask = project(text.audio, model.audio_caption_projection if use else None)
        return dict(encoder_hidden_states=video, audio_encoder_hidden_states=audio,
                    encoder_attention_mask=video_mask, audio_encoder_attention_mask=audio_mask)

    def _text_kv(self, text: TextContext) -> list[TextKV]:
        """Text keys/values ``(B, heads, L, head_dim)`` and additive masks ``(B, 1, 1, L)`` of every block."""
        inputs = self._text_inputs(text)
        masks = (inputs["encoder_attention_mask"][:, None], inputs["audio_encoder_attention_mask"][:, None])
        out = []
        for block in self.transformer.transformer_blocks:
            with _full_weights(block):
                out.append(TextKV(keys_values(block.attn2, inputs["encoder_hidden_states"]),
                                  keys_values(block.audio_attn2, inputs["audio_encoder_hidden_states"]), *masks))
        return out

    def _placeholder(self, batch: int, tokens: int, channels: int) -> Tensor:
        """Zero tokens of one latent of an absent stream."""
        return torch.zeros(batch, tokens, channels, device=self.device, dtype=self.dtype)

    # ---------------------------------------------------------------- heads (forward step 6)
    def _video_out(self, x: Tensor, embedded: Tensor, video: Tensor) -> Tensor:
        model = self.transformer
        shift, scale = (model.scale_shift_table[None, None] + embedded[:, :, None]).unbind(2)
        out = model.proj_out(model.norm_out(x) * (1 + scale) + shift)
        _, frames, _, h, w = video.shape
        return out.unflatten(1, (frames, h, w)).permute(0, 1, 4, 2, 3)

    def _audio_out(self, x: Tensor, embedded: Tensor) -> Tensor:
        model = self.transformer
        shift, scale = (model.audio_scale_shift_table[None, None] + embedded[:, :, None]).unbind(2)
        return model.audio_proj_out(model.audio_norm_out(x) * (1 + scale) + shift)

    # ---------------------------------------------------------------- cache helpers
    def _history_masks(self, plan: CachePlan, cache: AVKVCache, layout: BlockLayout, block: int, num_video: int,
                       num_audio: int) -> AttentionMasks:
        """Masks over ``[history | current]`` keys of a several-block cached call, made once per plan."""
        if "masks" not in plan.masks:
            device = self.device
            first_v, first_a = layout.video_start(block), layout.audio_start(block)
            video_ids = layout.video_blocks_of(torch.arange(first_v, first_v + num_video)) if num_video else None
            audio_ids = layout.audio_blocks_of(torch.arange(first_a, first_a + num_audio)) if num_audio else None
            sinks = self.num_audio_sinks if block == 0 else 0
            video_ids, audio_ids = token_blocks(video_ids, audio_ids, self.video_grid[0] * self.video_grid[1], sinks)
            keys = [None if ids is None else ids if history is None else torch.cat([history, ids])
                    for history, ids in ((cache.video_blocks, video_ids), (cache.audio_blocks, audio_ids))]
            masks = visibility_masks(video_ids, audio_ids, *keys, cache.video_window, cache.audio_window)
            plan.masks["masks"] = to_additive(AttentionMasks(*(None if m is None else m.to(device) for m in (
                masks.video_self, masks.audio_self, masks.audio_to_video, masks.video_to_audio))), self.dtype)
        return plan.masks["masks"]

    def _allocate_history(self, plan: CachePlan, batch: int, has_video: bool, has_audio: bool) -> None:
        """Allocate the ring storage before the first commit, on the host side (as DualStreamTransformer)."""
        produced = {"video_self": has_video, "audio_self": has_audio,
                    "audio_to_video": has_video and has_audio, "video_to_audio": has_video and has_audio}
        weight = self.transformer.proj_in.weight
        for history, kinds in ((plan.video, VIDEO_KINDS), (plan.audio, AUDIO_KINDS)):
            for index, block in enumerate(self.transformer.transformer_blocks):
                for kind in kinds if history is not None else ():
                    if produced[kind] and not history.ring.allocated(index, kind):
                        module = getattr(block, KIND_MODULES[kind])
                        empty = weight.new_empty(batch, module.heads, 0, module.head_dim)
                        history.ring.allocate(index, kind, KV(empty, empty))


# -------------------------------------------------------------------- helpers
@contextmanager
def _full_weights(block: nn.Module) -> Iterator[None]:
    """A block's whole weights outside its own forward: an FSDP unit (FSDP1 wrapper or FSDP2 module) holds only
    its shard between forwards. Collective: every rank reaches it at the same call (not run on GPUs here)."""
    if isinstance(block, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(block, writeback=False):
            yield
    elif isinstance(block, FSDPModule):
        block.unshard()
        try:
            yield
        finally:
            block.reshard()
    else:
        yield


def _video_tokens(video: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, Tv, C, h, w)`` -> ``(B, Tv*h*w, C)``: frame-major, then rows, then columns (``_pack_latents``)."""
    return video.permute(0, 1, 3, 4, 2).flatten(1, 3).to(dtype)


def _block_conditioning(video: StreamConditioning, audio: StreamConditioning) -> dict:
    return dict(temb=video.temb, temb_audio=audio.temb, temb_ca_scale_shift=video.cross_scale_shift,
                temb_ca_audio_scale_shift=audio.cross_scale_shift, temb_ca_gate=video.cross_gate,
                temb_ca_audio_gate=audio.cross_gate)


def _block_rope(video: StreamRope, audio: StreamRope, batch: int) -> dict:
    return dict(video_rotary_emb=batched(video.self_rope, batch), audio_rotary_emb=batched(audio.self_rope, batch),
                ca_video_rotary_emb=batched(video.cross_rope, batch),
                ca_audio_rotary_emb=batched(audio.cross_rope, batch))


def _zero_step(width: int) -> TimestepEmbedding:
    step = TimestepEmbedding(width)
    nn.init.zeros_(step.mlp[-1].weight)  # enabling it on a trained model changes nothing until trained
    nn.init.zeros_(step.mlp[-1].bias)
    return step
