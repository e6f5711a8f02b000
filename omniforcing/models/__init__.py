"""Pure-PyTorch models: the dual-stream audio-video transformer, its block layout, caches and text encoder."""

from omniforcing.models.kv_cache import AVKVCache, CacheState
from omniforcing.models.layout import AttentionMasks, BlockLayout, block_causal_masks, block_visibility
from omniforcing.models.protocol import AVBackbone
from omniforcing.models.presets import PRESETS, build_preset, preset_kwargs
from omniforcing.models.text import ByteTextEncoder, TextContext, TextEmbedding, TextEncoder
from omniforcing.models.transformer import DualStreamTransformer

__all__ = [
    "PRESETS",
    "AVBackbone",
    "AVKVCache",
    "AttentionMasks",
    "BlockLayout",
    "ByteTextEncoder",
    "CacheState",
    "DualStreamTransformer",
    "LTX2Backbone",
    "TextContext",
    "TextEmbedding",
    "TextEncoder",
    "block_causal_masks",
    "block_visibility",
    "build_preset",
    "preset_kwargs",
]


def __getattr__(name: str):
    """``LTX2Backbone`` on first use: importing diffusers costs seconds, which no other caller should pay."""
    if name == "LTX2Backbone":
        from omniforcing.models.ltx2 import LTX2Backbone
        return LTX2Backbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
