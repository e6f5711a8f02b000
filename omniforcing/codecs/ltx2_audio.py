"""LTX-2's audio VAE and vocoder behind :class:`~omniforcing.codecs.base.AudioCodec`, loaded from a local folder.

Wraps ``diffusers.AutoencoderKLLTX2Audio`` and ``diffusers.pipelines.ltx2.vocoder.LTX2Vocoder`` (or
``LTX2VocoderWithBWE``). The waveform -> mel step is LTX-2's training preprocessing (not part of diffusers):
torchaudio's ``MelSpectrogram`` at the VAE's ``sample_rate`` with ``hop = mel_hop_length``, ``n_mels = mel_bins``,
``n_fft = win_length = 1024``, Hann window, centred frames with reflect padding, magnitude (power 1), Slaney mel
scale and norm, then ``log(max(mel, 1e-5))``; mono is copied to the VAE's input channels (2).

Geometry, read from the configs: 16 kHz / hop 160 / temporal compression 4 = 25 latents per second, each 8
channels x 16 mel bins packed into 128 exactly as the pipeline's ``_pack_audio_latents`` (called, not copied).
LTX-2's causal audio latents follow the video's rule: latent 0 is one mel frame (the instant ``t = 0``), latent
``j >= 1`` the four frames ``4j - 3 .. 4j``, i.e. ``[40 j - 30, 40 j + 10)`` ms (the transformer's RoPE
coordinates). Our contract gives latent ``j`` the 640 samples ``[40 j, 40 j + 40)`` ms, so the codec places LTX-2's
time 0 at our sample ``lead = 3 * 160`` (30 ms): ``encode`` reads the clip from sample 480 on, and ``decode``
returns 480 zero samples followed by the vocoder's ``(4 Ta - 3) * 160`` samples. Round trips are aligned; the
audio is 30 ms later relative to the video than in LTX-2's own pairing (docs/codecs.md, "LTX-2 codec").

Streaming: the audio VAE decoder is causal in time, the vocoder and the resampler are not, so a block's samples
depend on ``decode_context`` latents before it and ``decode_lookahead`` latents after it (the structural reach,
measured like the video decoder's on narrow float64 copies).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLLTX2Audio
from diffusers.pipelines.ltx2.pipeline_ltx2 import LTX2Pipeline
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE
from torch import Tensor, nn
from torchaudio.functional import resample
from torchaudio.transforms import MelSpectrogram

from omniforcing.codecs.ltx2 import (
    DecodeReach,
    Dtype,
    load_ltx2_part,
    measure_decode_reach,
    narrow_channels,
    structural_probe,
)
from omniforcing.codecs.normalization import LatentNormalizer, NormalizedAudioCodec
from omniforcing.errors import InvalidInputError, MissingInputError
from omniforcing.types import AUDIO_LATENT_RATE

VOCODERS = {cls.__name__: cls for cls in (LTX2Vocoder, LTX2VocoderWithBWE)}
MIN_LOG_MEL = 1e-5
"""Floor of the mel magnitude before the log (LTX-2's preprocessing)."""


class LTX2AudioCodec(NormalizedAudioCodec):
    """LTX-2's audio VAE + vocoder: mono ``(B, 1, 640 Ta)`` at ``sample_rate`` <-> normalised ``(B, Ta, 128)``.

    Args:
        pretrained: the LTX-2 folder (with the two subfolders inside).
        subfolder: the audio VAE's folder in ``pretrained``.
        vocoder_subfolder: the vocoder's folder in ``pretrained``.
        sample_rate: our waveform rate (resampled to and from the VAE's and the vocoder's rates).
        n_fft: FFT and window length of the mel spectrogram (1024 in LTX-2's preprocessing).
        dtype: weights and compute dtype (latents and waveforms are returned as float32).
        context_latents: left context a stream keeps and decodes with each block; ``None`` = the decoder's
            structural reach (measured on first use).
    """

    def __init__(self, pretrained: Path, subfolder: str = "audio_vae", vocoder_subfolder: str = "vocoder",
                 sample_rate: int = 16000, n_fft: int = 1024, dtype: Dtype = "float32",
                 context_latents: int | None = None) -> None:
        super().__init__()
        self.audio_vae = load_ltx2_part(AutoencoderKLLTX2Audio, pretrained, subfolder, dtype, "audio VAE")
        self.vocoder = load_ltx2_part(vocoder_class(Path(pretrained) / vocoder_subfolder), pretrained,
                                      vocoder_subfolder, dtype, "vocoder")
        config = self.audio_vae.config
        self.vae_rate, self.hop_length = config.sample_rate, config.mel_hop_length
        self.temporal_ratio = self.audio_vae.temporal_compression_ratio
        if self.vae_rate != AUDIO_LATENT_RATE * self.hop_length * self.temporal_ratio:
            raise InvalidInputError(f"LTX-2 audio VAE: {self.vae_rate} Hz / hop {self.hop_length} / "
                                    f"{self.temporal_ratio} is not {AUDIO_LATENT_RATE} latents per second")
        lead = (self.temporal_ratio - 1) * self.hop_length * sample_rate / self.vae_rate
        if sample_rate % AUDIO_LATENT_RATE or lead != int(lead):
            raise InvalidInputError(f"sample_rate {sample_rate} must be a multiple of {AUDIO_LATENT_RATE} Hz "
                                    f"holding a whole {1000 * lead / sample_rate:g} ms lead")
        self.sample_rate, self.lead_samples = sample_rate, int(lead)
        self.mel_bins, self.latent_mel_bins = config.mel_bins, config.mel_bins // self.audio_vae.mel_compression_ratio
        self.latent_channels = config.latent_channels * self.latent_mel_bins
        check_vocoder(self.vocoder, config.output_channels * self.mel_bins)
        self.mel = MelSpectrogram(sample_rate=self.vae_rate, n_fft=n_fft, win_length=n_fft,
                                  hop_length=self.hop_length, f_min=0.0, f_max=self.vae_rate / 2,
                                  n_mels=self.mel_bins, window_fn=torch.hann_window, center=True,
                                  pad_mode="reflect", power=1.0, mel_scale="slaney", norm="slaney")
        self.normalizer = LatentNormalizer(self.latent_channels)
        if self.audio_vae.latents_mean.numel() != self.latent_channels:
            raise InvalidInputError(f"LTX-2 audio VAE: latents_mean has {self.audio_vae.latents_mean.numel()} "
                                    f"entries, its packed latents {self.latent_channels} channels")
        self.normalizer.mean.copy_(self.audio_vae.latents_mean.float())
        self.normalizer.std.copy_(self.audio_vae.latents_std.float())
        if context_latents is not None and context_latents < 1:
            raise InvalidInputError(f"context_latents must be >= 1, got {context_latents}")
        self.context_latents = context_latents

    @property
    def dtype(self) -> torch.dtype:
        """The audio VAE's weight dtype."""
        return self.audio_vae.dtype

    @property
    def decode_reach(self) -> DecodeReach:
        """The decoder's structural temporal reach in latents (VAE decoder + vocoder + resampling)."""
        return audio_decode_reach(self)

    @property
    def decode_context(self) -> int:  # type: ignore[override]
        """Latents before a block that block-wise decoding reads (``context_latents`` or the decoder's reach)."""
        return self.decode_reach.context if self.context_latents is None else self.context_latents

    @property
    def decode_lookahead(self) -> int:  # type: ignore[override]
        """Latents after a block that still change its samples (the vocoder is not causal)."""
        return self.decode_reach.lookahead

    def log_mel(self, audio: Tensor) -> Tensor:
        """LTX-2's log-mel input ``(B, in_channels, F, mel_bins)`` of mono ``(B, S)`` at our sample rate."""
        wave = resample(audio.float(), self.sample_rate, self.vae_rate)
        if wave.shape[-1] <= self.mel.n_fft // 2:
            raise ValueError(f"LTX-2 audio encoding needs more than {self.mel.n_fft // 2} samples at "
                             f"{self.vae_rate} Hz after the lead (reflect padding); encode at least 2 latents")
        mel = self.mel(wave).clamp_min(MIN_LOG_MEL).log().transpose(1, 2)  # (B, F, mel_bins)
        return mel[:, None].expand(-1, self.audio_vae.config.in_channels, -1, -1)

    def encode_raw(self, audio: Tensor) -> Tensor:
        """``(B, 1, 640 Ta)`` -> raw packed posterior modes ``(B, Ta, C * M)`` (float32)."""
        count = self.check_audio(audio)
        mel = self.log_mel(audio[:, 0, self.lead_samples:])
        latents = self.audio_vae.encode(mel.to(self.dtype)).latent_dist.mode()[:, :, :count]  # (B, C, Ta, M)
        return LTX2Pipeline._pack_audio_latents(latents).float()

    def decode_raw(self, raw: Tensor) -> Tensor:
        """Raw packed latents ``(B, Ta, C * M)`` -> mono waveform ``(B, 1, 640 Ta)`` in ``[-1, 1]`` (float32)."""
        self.check_latents(raw)
        return waveform(self.audio_vae, self.vocoder, raw.to(self.dtype), self.latent_mel_bins, self.sample_rate,
                        self.lead_samples).float().clamp(-1, 1)


def vocoder_class(folder: Path) -> type[nn.Module]:
    """The diffusers vocoder class named in ``folder/config.json`` (``LTX2Vocoder`` or ``LTX2VocoderWithBWE``)."""
    config = folder / "config.json"
    if not config.is_file():
        return LTX2Vocoder  # load_ltx2_part reports the missing folder
    name = json.loads(config.read_text()).get("_class_name", "LTX2Vocoder")
    if name not in VOCODERS:
        raise MissingInputError(f"{config}: vocoder class {name!r} is not one of {sorted(VOCODERS)}")
    return VOCODERS[name]


def check_vocoder(vocoder: nn.Module, mel_features: int) -> None:
    """The vocoder must read the audio VAE's mel output (channels x mel bins)."""
    config = vocoder.config
    if config.in_channels != mel_features:
        raise InvalidInputError(f"LTX-2 vocoder reads {config.in_channels} mel features, the audio VAE gives "
                                f"{mel_features}")


def waveform(audio_vae: AutoencoderKLLTX2Audio, vocoder: nn.Module, raw: Tensor, latent_mel_bins: int,
             sample_rate: int, lead_samples: int) -> Tensor:
    """Packed raw latents ``(B, Ta, C * M)`` -> ``(B, 1, lead + (4 Ta - 3) hop)`` at ``sample_rate``, lead zeros.

    Audio VAE decode -> mel ``(B, 2, 4 Ta - 3, mel_bins)`` -> vocoder -> channel mean -> resampling.
    """
    count = raw.shape[1]
    latents = LTX2Pipeline._unpack_audio_latents(raw, count, num_mel_bins=latent_mel_bins)
    mel = audio_vae.decode(latents).sample
    wave = vocoder(mel).mean(dim=1)  # (B, n) at the vocoder's output rate
    wave = wave.to(torch.promote_types(wave.dtype, torch.float32))  # resample bf16 output in float32
    wave = resample(wave, vocoder.config.output_sampling_rate, sample_rate)
    vae_config = audio_vae.config
    expected = mel.shape[2] * vae_config.mel_hop_length * sample_rate // vae_config.sample_rate
    if wave.shape[-1] != expected:
        raise InvalidInputError(f"LTX-2 vocoder gave {wave.shape[-1]} samples for {mel.shape[2]} mel frames, "
                                f"expected {expected} (its upsampling must match the audio VAE's hop)")
    return F.pad(wave, (lead_samples, 0))[:, None]


_REACH_CACHE: dict[str, DecodeReach] = {}


def audio_decode_reach(codec: LTX2AudioCodec) -> DecodeReach:
    """The reach of the whole decode path (VAE decoder, vocoder, resampling) in latents, cached per config.

    Measured on structural probes: the same configs with narrow channels (the VAE's base 32, the vocoders'
    hidden widths the smallest their halving allows); a bandwidth-extension vocoder keeps its loaded STFT and
    mel bases, which are buffers of the checkpoint rather than weights (random ones where they are all zero).
    """
    vae_config = {k: v for k, v in codec.audio_vae.config.items() if not k.startswith("_")}
    voc_config = {k: v for k, v in codec.vocoder.config.items() if not k.startswith("_")}
    key = repr((sorted(vae_config.items()), sorted(voc_config.items()), codec.sample_rate))
    if key not in _REACH_CACHE:
        vae_config["base_channels"] = min(vae_config["base_channels"], 32)
        for name in ("hidden_channels", "bwe_hidden_channels"):
            if name in voc_config:
                layers = len(voc_config["upsample_factors" if name == "hidden_channels" else "bwe_upsample_factors"])
                voc_config[name] = narrow_channels([voc_config[name]], 2 ** (layers + 1))[0]
        vae = structural_probe(lambda: AutoencoderKLLTX2Audio.from_config(vae_config))
        vocoder = structural_probe(lambda: type(codec.vocoder).from_config(voc_config))
        if hasattr(vocoder, "mel_stft"):
            vocoder.mel_stft.load_state_dict(codec.vocoder.mel_stft.state_dict())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                for basis in vocoder.mel_stft.buffers():
                    if not basis.any():  # never-trained (all-zero) bases would give 0/0 gradients in the magnitude
                        basis.copy_(torch.randn_like(basis))
            vocoder.double()
        span = codec.samples_per_latent
        _REACH_CACHE[key] = measure_decode_reach(
            lambda z: waveform(vae, vocoder, z, codec.latent_mel_bins, codec.sample_rate, codec.lead_samples)[:, 0],
            lambda n: torch.randn(1, n, codec.latent_channels, generator=torch.Generator().manual_seed(0),
                                  dtype=torch.float64),
            lambda k: slice(span * k, span * (k + 1)))
    return _REACH_CACHE[key]
