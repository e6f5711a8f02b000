"""LTX-2 through diffusers: the backbone adapter, its attention processors, RoPE coordinates and prompt encoders."""

from omniforcing.models.ltx2.backbone import LTX2Backbone
from omniforcing.models.ltx2.config import LTX2Architecture
from omniforcing.models.ltx2.text import BytePromptEncoder, PromptEncoder

__all__ = ["BytePromptEncoder", "LTX2Architecture", "LTX2Backbone", "PromptEncoder"]
