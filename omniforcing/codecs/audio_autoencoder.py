"""An optional learned audio codec: a small causal autoencoder on the mel codec's 40 ms latents.

It compresses the 256 normalised log-mel values of each latent (4 frames x 64 bins, see
:class:`~omniforcing.codecs.mel.MelAudioCodec`) to ``latent_channels`` values (default 32) at the same
25 latents per second, and decodes back to mel latents; the waveform comes from the mel codec's inverse
(NNLS inverse mel + Griffin-Lim). Encoder and decoder are a causal 1-D convolution over latent time (latent
``j`` sees latents ``j - context .. j``; before the clip the first latent repeats) followed by per-latent
residual MLP layers, so no latent depends on audio after its own 40 ms span. The bottleneck is variational
(posterior mean and log-variance, a sample in training, the mean in ``encode``; KL term in the training
loss), as in :mod:`~omniforcing.codecs.video_autoencoder`.

The mel codec's normalisation statistics must be fitted before this autoencoder is trained (its input
and reconstruction target are normalised mel latents); ``fit_normalization`` fits this codec's own latents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniforcing.codecs.checkpoint import load_codec_weights
from omniforcing.codecs.losses import spectral_convergence
from omniforcing.codecs.mel import MelAudioCodec
from omniforcing.codecs.normalization import LatentNormalizer, NormalizedAudioCodec
from omniforcing.codecs.protocol import CodecLossWeights, CodecReconstruction
from omniforcing.codecs.video_autoencoder import start_posterior_narrow


class CausalLatentNet(nn.Module):
    """``(B, T, in)`` -> ``(B, T, out)``: a causal conv over ``1 + context`` steps, then pre-norm residual MLPs.

    Args:
        in_channels: input features per step.
        hidden_channels: width of the hidden layers.
        out_channels: output features per step.
        context: earlier steps the first layer sees (the first step is repeated before the sequence).
        layers: residual MLP layers after the convolution.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, context: int, layers: int) -> None:
        super().__init__()
        self.context = context
        self.conv = nn.Conv1d(in_channels, hidden_channels, 1 + context)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_channels), nn.SiLU(), nn.Linear(hidden_channels, hidden_channels))
            for _ in range(layers))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_channels, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        padded = F.pad(x.transpose(1, 2), (self.context, 0), mode="replicate") if self.context else x.transpose(1, 2)
        h = self.conv(padded).transpose(1, 2)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class MelAutoencoder(NormalizedAudioCodec):
    """Learned causal audio codec on mel latents (issue 3, item 2): ``(B, 1, S)`` <-> ``(B, S / 640, C)``.

    Args:
        mel: the mel codec underneath (default: :class:`MelAudioCodec` with its defaults); its statistics
            are part of this codec's checkpoint.
        latent_channels: channels ``C`` per 40 ms latent.
        hidden_channels: width of encoder and decoder.
        context_latents: earlier latents each causal convolution sees.
        layers: residual MLP layers in encoder and decoder.
        checkpoint: optional ``.safetensors`` from :func:`~omniforcing.codecs.save_codec` (weights + stats).
    """

    def __init__(self, mel: MelAudioCodec | None = None, latent_channels: int = 32, hidden_channels: int = 256,
                 context_latents: int = 1, layers: int = 2, checkpoint: str | None = None) -> None:
        super().__init__()
        self.mel = mel if mel is not None else MelAudioCodec()
        self.init_args = {"mel": self.mel, "latent_channels": latent_channels, "hidden_channels": hidden_channels,
                          "context_latents": context_latents, "layers": layers}
        self.sample_rate = self.mel.sample_rate
        self.latent_channels = latent_channels
        mel_channels = self.mel.latent_channels
        self.encoder = CausalLatentNet(mel_channels, hidden_channels, 2 * latent_channels, context_latents, layers)
        self.decoder = CausalLatentNet(latent_channels, hidden_channels, mel_channels, context_latents, layers)
        self.normalizer = LatentNormalizer(latent_channels)
        start_posterior_narrow(self.encoder.out[-1], latent_channels)
        if checkpoint is not None:
            load_codec_weights(self, checkpoint)

    @property
    def decode_context(self) -> int:
        """Latents before a block that the causal decoder reads (its convolution's context)."""
        return self.decoder.context

    def encode_distribution(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 1, S)`` -> posterior ``(mean, logvar)``, each ``(B, S / 640, C)``."""
        return self._posterior(self.mel.encode(audio))

    def _posterior(self, mel_latents: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.encoder(mel_latents).chunk(2, dim=-1)
        return mean, logvar.clamp(-20.0, 5.0)

    def encode_raw(self, audio: Tensor) -> Tensor:
        """``(B, 1, S)`` -> raw latents (posterior means) ``(B, S / 640, C)``."""
        return self.encode_distribution(audio)[0]

    def decode_raw(self, raw: Tensor) -> Tensor:
        """Raw latents ``(B, Ta, C)`` -> waveform ``(B, 1, Ta * 640)`` through the mel codec's inverse."""
        self.check_latents(raw)
        return self.mel.decode(self.decoder(raw))

    def autoencode(self, audio: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training pass on mel latents: encode, sample the posterior (its mean in eval mode), decode.

        Returns:
            ``(mel_latents, recon, mean, logvar)``: the normalised mel latents ``(B, Ta, 256)`` (the target, no
            gradient), their reconstruction (same shape), and the posterior moments ``(B, Ta, C)``.
        """
        with torch.no_grad():
            mel_latents = self.mel.encode(audio)
        mean, logvar = self._posterior(mel_latents)
        latents = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if self.training else mean
        return mel_latents, self.decoder(latents), mean, logvar

    # ---------------------------------------------------------------- training (codecs.protocol.TrainableCodec)
    def check_trainable(self) -> None:
        """The mel latents it trains on are normalised: the mel codec's statistics must be fitted."""
        if not self.mel.normalizer.is_fitted:
            raise ValueError("MelAutoencoder trains on normalised mel latents, but its mel codec has no fitted "
                             "statistics: set mel.init_args.checkpoint (checkpoints/reference/codec/mel.safetensors, "
                             "or your data's from `omniforcing data codec-stats`)")

    def training_losses(self, media: Tensor, weights: CodecLossWeights) -> dict[str, Tensor]:
        """:func:`~omniforcing.codecs.objectives.audio_autoencoder_loss` on ``(B, 1, S)``."""
        from omniforcing.codecs.objectives import audio_autoencoder_loss  # objectives imports this module

        return audio_autoencoder_loss(self, media, convergence_weight=weights.convergence_weight,
                                      kl_weight=weights.kl_weight)

    def reconstruction(self, media: Tensor, raw: Tensor) -> CodecReconstruction:
        """Spectral convergence of the waveform after the mel inverse (Griffin-Lim); normalised mel error per
        latent."""
        mel_latents, recon_mel = self.mel.encode(media), self.decoder(raw)
        recon = self.mel.decode(recon_mel)
        reference = self.mel.power_spectrogram(media).sqrt()
        estimate = self.mel.power_spectrogram(recon).sqrt()
        return CodecReconstruction({"spectral_convergence": spectral_convergence(reference, estimate).mean()}, recon,
                                   (recon_mel - mel_latents).square().mean(2).sum(0))
