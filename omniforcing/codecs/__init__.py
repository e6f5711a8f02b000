"""Codecs: raw clips <-> normalised latents at 3 video / 25 audio latents per second.

* :class:`PatchVideoCodec` — exact causal space-time patches (1536 channels on a 4x4 grid), the baseline;
* :class:`CausalVideoAutoencoder` — learned causal video latents (16 channels on a 4x4 grid), the default;
* :class:`MelAudioCodec` — causal log-mel latents (256 channels), inverse by NNLS + Griffin-Lim;
* :class:`MelAutoencoder` — optional learned causal audio latents on top of the mel codec (32 channels);
* :func:`save_codec` / :func:`load_codec` — safetensors weights + a JSON record of the init args;
* :class:`LTX2VideoCodec` / :class:`LTX2AudioCodec` — LTX-2's VAEs and vocoder from a local folder (diffusers).

Training objectives of the learned codecs are in :mod:`omniforcing.codecs.objectives`, their loss terms and
reconstruction measures (PSNR, spectral convergence, ...) in :mod:`omniforcing.codecs.losses`.
"""

import importlib

from omniforcing.codecs.audio_autoencoder import MelAutoencoder
from omniforcing.codecs.base import AudioCodec, AVCodec, VideoCodec
from omniforcing.codecs.checkpoint import build_codec, codec_config, load_codec, load_codec_weights, save_codec
from omniforcing.codecs.mel import MelAudioCodec
from omniforcing.codecs.normalization import LatentNormalizer, NormalizedAudioCodec, NormalizedVideoCodec
from omniforcing.codecs.patch import PatchVideoCodec
from omniforcing.codecs.video_autoencoder import CausalVideoAutoencoder

LAZY_CODECS = {"LTX2VideoCodec": "omniforcing.codecs.ltx2", "LTX2AudioCodec": "omniforcing.codecs.ltx2_audio"}
"""Codecs imported on first use: they import diffusers, which takes seconds."""


def __getattr__(name: str) -> type:
    if name in LAZY_CODECS:
        return getattr(importlib.import_module(LAZY_CODECS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AVCodec",
    "AudioCodec",
    "CausalVideoAutoencoder",
    "LTX2AudioCodec",
    "LTX2VideoCodec",
    "LatentNormalizer",
    "MelAudioCodec",
    "MelAutoencoder",
    "NormalizedAudioCodec",
    "NormalizedVideoCodec",
    "PatchVideoCodec",
    "VideoCodec",
    "build_codec",
    "codec_config",
    "load_codec",
    "load_codec_weights",
    "save_codec",
]
