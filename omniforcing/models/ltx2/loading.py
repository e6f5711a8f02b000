"""Loading the diffusers LTX-2 transformer for :class:`~omniforcing.models.ltx2.backbone.LTX2Backbone`: from a
local folder only (nothing downloads at run time), or randomly initialised from an architecture; with the
checks that turn a missing folder or an unsupported config into a one-line error."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import LTX2VideoTransformer3DModel
from torch import nn

from omniforcing.errors import InvalidInputError, MissingInputError
from omniforcing.models.ltx2.config import LTX2Architecture

DOWNLOAD = ("download the '{sub}/' folder of Lightricks/LTX-2 from the Hugging Face hub (huggingface-cli download "
            "Lightricks/LTX-2 --include '{sub}/*' --local-dir DIR) and pass DIR as pretrained")


def audio_latent_rate(config) -> int:
    """Audio latents per second of a diffusers LTX-2 config (sampling rate / hop / scale factor), whole."""
    rate = config.audio_sampling_rate / config.audio_hop_length / config.audio_scale_factor
    if not float(rate).is_integer():
        raise InvalidInputError(f"audio latents per second {rate} (sampling rate / hop / scale factor) is not whole")
    return int(rate)


def check_supported(config) -> None:
    """Refuse configs the adapter cannot run (patch sizes other than 1, LTX-2.3 prompt modulation)."""
    if config.patch_size != 1 or config.patch_size_t != 1 or config.audio_patch_size != 1:
        raise InvalidInputError("the LTX-2 backbone needs patch sizes 1 (one token per latent and position)")
    if config.cross_attn_mod or config.audio_cross_attn_mod:
        raise InvalidInputError("LTX-2.3 prompt modulation (cross_attn_mod) needs one sigma per sample; the "
                                "backbone supports LTX-2.0 weights")


def load_transformer(pretrained: Path | None, subfolder: str, architecture: LTX2Architecture | None,
                     dtype: str) -> LTX2VideoTransformer3DModel:
    """The diffusers transformer from a local folder (never downloads) or randomly initialised."""
    torch_dtype = getattr(torch, dtype)
    if pretrained is None:
        if architecture is None:
            raise ValueError("give pretrained (a local LTX-2 folder) or architecture (a random model)")
        # nn.Module.to: ModelMixin.to warns about modules to keep in float32, which LTX-2 has none of
        return nn.Module.to(LTX2VideoTransformer3DModel(**architecture.diffusers_config()), torch_dtype)
    if architecture is not None:
        raise ValueError("give pretrained or architecture, not both")
    folder = Path(pretrained).expanduser() / subfolder
    if not (folder / "config.json").is_file():
        raise MissingInputError(f"no LTX-2 transformer at {folder} (config.json missing): "
                                + DOWNLOAD.format(sub=subfolder))
    try:
        model = LTX2VideoTransformer3DModel.from_pretrained(Path(pretrained).expanduser(), subfolder=subfolder,
                                                            local_files_only=True, torch_dtype=torch_dtype)
        return model.train()  # from_pretrained returns eval mode; a backbone starts in training mode like any module
    except OSError as error:  # config present, weights missing or unreadable
        raise MissingInputError(f"cannot load the LTX-2 transformer weights from {folder} "
                                f"({str(error).splitlines()[0]}): " + DOWNLOAD.format(sub=subfolder)) from None
