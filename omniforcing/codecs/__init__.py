"""Codecs: raw clips <-> normalised latents at 3 video / 25 audio latents per second.

* :class:`PatchVideoCodec` — exact causal space-time patches (1536 channels on a 4x4 grid), the baseline;
* :class:`CausalVideoAutoencoder` — learned causal video latents (16 channels on a 4x4 grid), the default;
* :class:`MelAudioCodec` — causal log-mel latents (256 channels), inverse by NNLS + Griffin-Lim;
* :class:`MelAutoencoder` — optional learned causal audio latents on top of the mel codec (32 channels);
* :func:`save_codec` / :func:`load_codec` — safetensors weights + a JSON record of the init args.

Training objectives of the learned codecs are in :mod:`omniforcing.codecs.objectives`, their loss terms and
reconstruction measures (PSNR, spectral convergence, ...) in :mod:`omniforcing.codecs.losses`.
"""

from omniforcing.codecs.audio_autoencoder import MelAutoencoder
from omniforcing.codecs.base import AudioCodec, AVCodec, VideoCodec
from omniforcing.codecs.checkpoint import build_codec, codec_config, load_codec, load_codec_weights, save_codec
from omniforcing.codecs.mel import MelAudioCodec
from omniforcing.codecs.normalization import LatentNormalizer, NormalizedAudioCodec, NormalizedVideoCodec
from omniforcing.codecs.patch import PatchVideoCodec
from omniforcing.codecs.video_autoencoder import CausalVideoAutoencoder

__all__ = [
    "AVCodec",
    "AudioCodec",
    "CausalVideoAutoencoder",
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
