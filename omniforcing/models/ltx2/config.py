"""Typed architecture of a randomly initialised LTX-2 transformer (diffusers ``LTX2VideoTransformer3DModel``).

The defaults are the tiny geometry every CPU test and ``recipes/model/ltx2_tiny.yaml`` use: 2 layers, video and
audio 2 heads x 8 dims, 8 latent channels per modality, 16 caption channels, cross-attention widths equal to the
stream widths (as LTX-2: ``cross_attention_dim`` = video inner width, ``audio_cross_attention_dim`` = audio inner
width, which is also the width of the audio<->video attention). The real LTX-2 (19 B) values are in the comments
and in the ``transformer/config.json`` of the Lightricks/LTX-2 weights, which ``pretrained=`` reads instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

RopeType = Literal["interleaved", "split"]


@dataclass(frozen=True)
class LTX2Architecture:
    """Fields of ``LTX2VideoTransformer3DModel.__init__`` that shape a random model (the rest keep diffusers'
    defaults, which are LTX-2's: 8x32x32 video VAE scale, 16 kHz audio with hop 160 and stride 4, 24-fps RoPE).

    Args:
        num_layers: transformer blocks (LTX-2: 48).
        num_attention_heads: video heads (LTX-2: 32).
        attention_head_dim: video head width (LTX-2: 128).
        audio_num_attention_heads: audio heads, also of audio<->video attention (LTX-2: 32).
        audio_attention_head_dim: audio head width (LTX-2: 64).
        in_channels: video latent channels (LTX-2: 128).
        audio_in_channels: audio latent channels, 8 channels x 16 mel bins packed (LTX-2: 128).
        caption_channels: width of the text features fed to the caption projections (LTX-2: 3840).
        rope_type: ``"interleaved"`` or ``"split"`` (LTX-2: ``"split"``).
        pos_embed_max_pos: seconds at the top of the video RoPE range (LTX-2: 20).
        audio_pos_embed_max_pos: the same for audio (LTX-2: 20).
    """

    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 8
    audio_num_attention_heads: int = 2
    audio_attention_head_dim: int = 8
    in_channels: int = 8
    audio_in_channels: int = 8
    caption_channels: int = 16
    rope_type: RopeType = "interleaved"
    pos_embed_max_pos: int = 20
    audio_pos_embed_max_pos: int = 20

    def diffusers_config(self) -> dict:
        """Keyword arguments of ``LTX2VideoTransformer3DModel(**...)`` for this architecture."""
        video_inner = self.num_attention_heads * self.attention_head_dim
        audio_inner = self.audio_num_attention_heads * self.audio_attention_head_dim
        return {**asdict(self), "out_channels": self.in_channels, "audio_out_channels": self.audio_in_channels,
                "cross_attention_dim": video_inner, "audio_cross_attention_dim": audio_inner}
