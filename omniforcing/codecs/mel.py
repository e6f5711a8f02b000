"""Causal log-mel audio codec: 64 mel bins every 10 ms, four frames stacked into one 40 ms latent.

Alignment (tested): mel frame ``f`` is the power spectrum of a Hann window of ``win_length`` samples that
*ends* at sample ``hop (f + 1)``, i.e. it covers ``[hop (f + 1) - win, hop (f + 1))`` with zeros before the
clip. So frame ``f`` depends only on audio up to the end of its own 10 ms hop (causal), and latent ``j``
(frames ``4j .. 4j + 3``) only on samples before ``640 (j + 1)``. An onset at time ``t`` first enters latent
``floor(t / 0.04)`` (the taper of the window can delay its peak to the next latent: ``+1`` at most).

Inverse (``decode``): the mel power is mapped back to linear frequency by a non-negative least-squares fit
(pseudo-inverse followed by multiplicative NNLS updates; the same problem torchaudio's ``InverseMelScale``
solves, with the negative part removed properly instead of clipped), then Griffin-Lim with momentum
(``torchaudio.functional.griffinlim``) recovers a phase. Griffin-Lim iterates over the whole clip, so
decoding is not causal; a streaming player decodes per block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torchaudio.functional import griffinlim, melscale_fbanks

from omniforcing.codecs.checkpoint import load_codec_weights
from omniforcing.codecs.normalization import LatentNormalizer, NormalizedAudioCodec
from omniforcing.types import AUDIO_LATENT_RATE


class MelAudioCodec(NormalizedAudioCodec):
    """Causal log-mel codec (issue 2, item 7): ``(B, 1, S)`` <-> ``(B, S / 640, 256)`` at the defaults.

    Channel ``k * n_mels + m`` of latent ``j`` is ``log(max(mel power, min_power))`` of mel bin ``m`` in
    frame ``4j + k``.

    Args:
        sample_rate: audio sample rate in Hz (a multiple of 25).
        n_mels: mel bins per frame.
        hop_length: samples between frames (10 ms at 16 kHz); ``frames_per_latent * hop_length`` must equal
            ``sample_rate / 25``.
        frames_per_latent: mel frames stacked into one latent.
        win_length: analysis window (and FFT) length in samples; at least ``2 * hop_length``.
        f_min: lowest mel filter edge in Hz.
        f_max: highest mel filter edge in Hz (``None``: Nyquist).
        min_power: floor of the mel power before the log (80 dB below a full-scale sine's peak bin).
        griffin_lim_iters: Griffin-Lim iterations in ``decode``.
        nnls_iters: multiplicative NNLS refinements of the inverse mel filterbank in ``decode``.
        checkpoint: optional ``.safetensors`` from :func:`~omniforcing.codecs.save_codec` with the statistics.

    The arguments other than ``checkpoint`` are recorded as ``init_args`` by the codec base
    (:class:`~omniforcing.class_paths.RecordsInitArgs`), which ``save_codec`` and exports write.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, hop_length: int = 160,
                 frames_per_latent: int = 4, win_length: int = 400, f_min: float = 0.0,
                 f_max: float | None = None, min_power: float = 1e-4, griffin_lim_iters: int = 32,
                 nnls_iters: int = 50, checkpoint: str | None = None) -> None:
        super().__init__()
        if hop_length * frames_per_latent * AUDIO_LATENT_RATE != sample_rate:
            raise ValueError(f"hop_length * frames_per_latent = {hop_length * frames_per_latent} samples must be "
                             f"one 1/{AUDIO_LATENT_RATE} s latent at {sample_rate} Hz")
        if win_length < 2 * hop_length:
            raise ValueError(f"win_length {win_length} must be >= 2 * hop_length for the causal window alignment")
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.frames_per_latent = frames_per_latent
        self.win_length = win_length
        self.min_power = min_power
        self.griffin_lim_iters = griffin_lim_iters
        self.nnls_iters = nnls_iters
        self.latent_channels = n_mels * frames_per_latent
        fbank = melscale_fbanks(win_length // 2 + 1, f_min, f_max if f_max is not None else sample_rate / 2,
                                n_mels, sample_rate)  # (freqs, mels)
        self.register_buffer("fbank", fbank, persistent=False)
        self.register_buffer("fbank_pinv", torch.linalg.pinv(fbank), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        self.normalizer = LatentNormalizer(self.latent_channels)
        if checkpoint is not None:
            load_codec_weights(self, checkpoint)

    def power_spectrogram(self, audio: Tensor) -> Tensor:
        """Causal power spectrogram ``(B, S / hop, win / 2 + 1)`` of ``(B, 1, S)``; frame f ends at ``hop (f + 1)``."""
        padded = F.pad(audio[:, 0], (self.win_length - self.hop_length, 0))
        spec = torch.stft(padded, self.win_length, self.hop_length, window=self.window, center=False,
                          return_complex=True)
        return spec.abs().square().transpose(1, 2)

    def log_mel(self, audio: Tensor) -> Tensor:
        """Causal log-mel frames ``(B, S / hop, n_mels)`` of ``(B, 1, S)``."""
        mel = self.power_spectrogram(audio) @ self.fbank
        return mel.clamp_min(self.min_power).log()

    def encode_raw(self, audio: Tensor) -> Tensor:
        """``(B, 1, S)`` -> stacked log-mel latents ``(B, S / 640, frames_per_latent * n_mels)``."""
        self.check_audio(audio)
        frames = self.log_mel(audio.float())
        return rearrange(frames, "b (n k) m -> b n (k m)", k=self.frames_per_latent)

    def decode_raw(self, raw: Tensor) -> Tensor:
        """Log-mel latents ``(B, Ta, C)`` -> waveform ``(B, 1, Ta * 640)`` by inverse mel + Griffin-Lim."""
        self.check_latents(raw)
        mel = rearrange(raw.float(), "b n (k m) -> b (n k) m", k=self.frames_per_latent).exp()
        return self.waveform_from_mel_power(mel)

    def linear_from_mel_power(self, mel: Tensor) -> Tensor:
        """Non-negative least-squares linear power ``(B, F, freqs)`` for mel power ``(B, F, n_mels)``."""
        linear = (mel @ self.fbank_pinv).clamp_min(1e-8)
        for _ in range(self.nnls_iters):  # Lee-Seung multiplicative updates keep the estimate non-negative
            linear = linear * (mel @ self.fbank.T) / ((linear @ self.fbank) @ self.fbank.T).clamp_min(1e-12)
        return linear

    def waveform_from_mel_power(self, mel: Tensor) -> Tensor:
        """Griffin-Lim waveform ``(B, 1, F * hop)`` for causal mel power frames ``(B, F, n_mels)``."""
        magnitude = self.linear_from_mel_power(mel).sqrt().transpose(1, 2)  # (B, freqs, F)
        # griffinlim uses centred frames: shifting the signal right by win/2 - hop samples puts the centre of
        # frame f where our causal frame f sits; the extra final centred frame repeats the last magnitude.
        shift = self.win_length // 2 - self.hop_length
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], -1)
        num_samples = mel.shape[1] * self.hop_length
        wave = griffinlim(magnitude, self.window, self.win_length, self.hop_length, self.win_length, power=1.0,
                          n_iter=self.griffin_lim_iters, momentum=0.99, length=num_samples + shift,
                          rand_init=False)
        return wave[:, None, shift:].clamp(-1, 1)
