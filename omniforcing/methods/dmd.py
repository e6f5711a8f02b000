"""Distribution matching distillation (DMD / DMD2) for joint audio-video generators (ALGORITHMS.md §3).

The generator ``G`` produces clean latents ``x``; a frozen *real score* (the teacher with classifier-free
guidance) and a trainable *fake score* (the critic, no guidance) denoise the same noisy copy ``x_t`` of them.
Per modality ``m`` and per sample (one flow time ``t`` per clip, shared by video and audio, because the
bidirectional teacher never saw mixed times):

    Δ_m = (x0_fake,m(x_t) - x0_real,m(x_t)) / mean|x_m - x0_real,m(x_t)|          (DMD eq. 8 normaliser)
    L_G = Σ_m w_m · ½ · mean((x_m - sg(x_m - Δ_m))²)             (gradient w.r.t. x_m: w_m Δ_m / N_m)

The critic is trained with the ordinary flow-matching (velocity) loss on generated samples (§3.2), and the
generator's inputs come from its own few-step chain (*backward simulation*, §3.3:
:func:`omniforcing.sampling.few_step.sample_few_step` with an ``exit_step``). Scores are samplers'
denoisers (``denoiser(x, t) -> velocity``, :mod:`omniforcing.diffusion.samplers`), so the losses can be tested
on analytic toys and used with any backbone; :meth:`DistributionMatching.real_score` and
:meth:`DistributionMatching.fake_score` bind a backbone (always called bidirectionally).
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniforcing.diffusion.flow import add_noise, velocity_target, x0_from_velocity
from omniforcing.diffusion.samplers import Denoiser
from omniforcing.diffusion.time_samplers import TimeSampler, UniformTimeSampler
from omniforcing.models.protocol import AVBackbone
from omniforcing.models.text import TextContext
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.types import AVLatents


def normalised_direction(x: Tensor, real_x0: Tensor, fake_x0: Tensor) -> Tensor:
    """DMD's generator direction ``(fake - real) / mean|x - real|`` with the mean per sample (DMD eq. 8).

    Args:
        x: generated clean latents ``(B, T, ...)``.
        real_x0: the real score's clean estimate at ``x_t``, same shape.
        fake_x0: the fake score's clean estimate at ``x_t``, same shape.

    Returns:
        ``Δ`` of the same shape; non-finite values (a zero normaliser) are replaced by 0.
    """
    dims = tuple(range(1, x.dim()))
    scale = (x.float() - real_x0.float()).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((fake_x0.float() - real_x0.float()) / scale, nan=0.0, posinf=0.0, neginf=0.0)


def surrogate_loss(x: Tensor, direction: Tensor) -> Tensor:
    """``½ mean((x - sg(x - Δ))²)``: a scalar whose gradient w.r.t. ``x`` is exactly ``Δ / x.numel()``."""
    target = (x.float() - direction).detach()
    return 0.5 * (x.float() - target).pow(2).mean()


def x0_prediction(score: Denoiser, xt: AVLatents, t: Tensor) -> AVLatents:
    """Clean estimate ``x_t - t v(x_t, t)`` of a velocity denoiser (``t`` per clip, ``(B,)``)."""
    return xt.zip_map(score(xt, t), lambda xm, vm: x0_from_velocity(xm, vm, t))


def _weighted(terms: dict[str, Tensor], weights: dict[str, float], prefix: str) -> dict[str, Tensor]:
    losses = {f"{prefix}_{name}": value for name, value in terms.items()}
    losses[prefix] = sum(weights[name] * value for name, value in terms.items())
    return losses


class DistributionMatching:
    """DMD generator loss and critic (fake-score) loss for audio-video latents.

    Guidance follows the package convention ``cond + (w - 1)(cond - uncond)`` (ALGORITHMS.md §3.4: a
    Self-Forcing ``guidance_scale g`` is ``w = 1 + g`` here; OmniForcing's configs use this convention already).

    Args:
        time_sampler: draws the flow time of the DMD term, one per clip; the default ``U[0.02, 0.98]`` is the
            clamp of Self-Forcing / DMD2 (keeps ``t`` away from the ends, where the scores carry no signal).
        critic_time_sampler: flow time of the critic's flow loss (default: the same as ``time_sampler``).
        video_cfg: guidance scale of the real score for video (OmniForcing v2: 3).
        audio_cfg: guidance scale of the real score for audio (OmniForcing v2: 5).
        video_weight: weight of the video term (generator and critic).
        audio_weight: weight of the audio term.
    """

    def __init__(self, time_sampler: TimeSampler | None = None, critic_time_sampler: TimeSampler | None = None,
                 video_cfg: float = 3.0, audio_cfg: float = 5.0, video_weight: float = 1.0,
                 audio_weight: float = 1.0) -> None:
        self.time_sampler = time_sampler or UniformTimeSampler(t_min=0.02, t_max=0.98)
        self.critic_time_sampler = critic_time_sampler or self.time_sampler
        self.video_cfg, self.audio_cfg = video_cfg, audio_cfg
        self.weights = {"video": video_weight, "audio": audio_weight}

    # ---------------------------------------------------------------- scores of backbones
    def real_score(self, teacher: AVBackbone, text: TextContext, null_text: TextContext | None) -> Denoiser:
        """The frozen teacher with per-modality CFG, called bidirectionally on the whole clip."""
        return GuidedDenoiser(teacher, text, null_text, self.video_cfg, self.audio_cfg, causal=False)

    @staticmethod
    def fake_score(critic: AVBackbone, text: TextContext) -> Denoiser:
        """The critic without guidance (DMD2 / Self-Forcing use no CFG on the fake score)."""
        return GuidedDenoiser(critic, text, causal=False)

    # ---------------------------------------------------------------- losses
    def _noisy(self, x: AVLatents, sampler: TimeSampler,
               generator: torch.Generator | None) -> tuple[AVLatents, AVLatents, Tensor]:
        ref = x.items()[0][1]
        t = sampler((x.batch_size,), generator=generator).to(ref.device)
        eps = x.map(lambda m: torch.randn(m.shape, generator=generator).to(m))
        return x.zip_map(eps, lambda m, e: add_noise(m.detach(), e, t)), eps, t

    def generator_loss(self, x: AVLatents, real_score: Denoiser, fake_score: Denoiser,
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """DMD loss of generated latents ``x`` (with gradient to the generator).

        Args:
            x: generated clean latents, video ``(B, Tv, C, h, w)`` / audio ``(B, Ta, C)``.
            real_score: teacher denoiser with guidance (no gradient is taken through it).
            fake_score: critic denoiser.
            generator: source of ``t`` and the noise.

        Returns:
            ``loss_dmd`` (weighted sum to minimise), ``loss_dmd_<m>``, ``dmd_direction_<m>`` (mean ``|Δ_m|``,
            the size of the injected gradient) and ``dmd_time`` (mean ``t``).
        """
        xt, _, t = self._noisy(x, self.time_sampler, generator)
        with torch.no_grad():
            real = x0_prediction(real_score, xt, t)
            fake = x0_prediction(fake_score, xt, t)
        terms, stats = {}, {}
        for (name, xm), (_, rm), (_, fm) in zip(x.items(), real.items(), fake.items()):
            direction = normalised_direction(xm.detach(), rm, fm)
            terms[name] = surrogate_loss(xm, direction)
            stats[f"dmd_direction_{name}"] = direction.abs().mean()
        return {**_weighted(terms, self.weights, "loss_dmd"), **stats, "dmd_time": t.mean()}

    def critic_loss(self, x: AVLatents, fake_score: Denoiser,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Flow-matching loss of the critic on generated latents ``x`` (treated as data; no generator gradient).

        Draws ``t`` then the noise per modality in the same order as
        :class:`omniforcing.methods.flow_matching.FlowMatching`, so both give the same value for the same
        generator state.

        Returns:
            ``loss_critic`` (weighted sum) and ``loss_critic_<m>`` (velocity MSE per modality).
        """
        x = x.detach()
        xt, eps, t = self._noisy(x, self.critic_time_sampler, generator)
        velocity = fake_score(xt, t)
        target = x.zip_map(eps, velocity_target)
        terms = {name: (v.float() - y.float()).pow(2).mean()
                 for (name, v), (_, y) in zip(velocity.items(), target.items())}
        return _weighted(terms, self.weights, "loss_critic")
