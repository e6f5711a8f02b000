"""Mutual Forcing: one causal audio-video model with a few-step and a multi-step mode on shared weights.

The paper (arXiv 2604.25819) has no public code and no method text beyond its abstract; this module implements
the reading of ALGORITHMS.md §7.3. Everything below marked OURS is a design choice of this project
(docs/mutual_forcing.md lists them), not the authors' method.

* **Mode signal (OURS).** The backbone is built with ``step_size_conditioning=True``: an embedding of the
  sampler step size ``d`` is added to the timestep conditioning (zero-initialised). The multi-step mode is
  ``d = 0`` (instantaneous velocity, plain flow matching, the shortcut-model convention); the few-step mode is
  ``d = 1 / K`` of the training grid (0.25 for 4 steps). One value serves every few-step grid: the few-step
  mode is trained as a consistency function (its ``x0 = x_t - t v`` is the multi-step ODE's endpoint), so 4-
  and 8-step samplers only evaluate it at different times. Committing a block to the KV cache (clean-context
  refresh) always uses the few-step value, in training and in both samplers, so the history a mode reads never
  depends on which sampler wrote it.
* **Training step** (:meth:`MutualForcing.loss`):

  1. draw ``k`` history blocks (uniform in ``[min, max]``, OURS; same on every rank) and write them with the
     few-step mode under ``no_grad`` **from the real clip** (``history``, default
     :class:`~omniforcing.sampling.dual_mode.HistoryFromRealClip`: each real block noised to a drawn flow time
     and few-step denoised from there, OURS; the paper says only that the few-step mode generates the history),
     committing each clean output to the KV cache (Self-Forcing's clean-context refresh, ALGORITHMS.md §5.2);
     ablations: :class:`~omniforcing.sampling.dual_mode.HistoryFromNoise` (from fresh noise, unrelated to the
     real next block) and ``teacher_forcing_probability`` (the real clip itself);
  2. multi-step mode, flow matching on the **real** block ``k`` against that cache:
     ``L_fm = ||v(x_t, t, d=0 | history) - (eps - x0_real)||²`` (§2.1);
  3. few-step mode distilled from the multi-step mode (stop-gradient targets of the same weights):
     ``"trajectory"`` (default, OURS): from ``x_s`` (the real block noised to a few-step time ``s``, or the
     few-step sampler's own state at ``s``), Euler-integrate the multi-step mode (with CFG) from ``s`` to 0
     under ``no_grad`` and regress the few-step ``x0`` onto the endpoint; ``"dmd"``: distribution matching
     (§3.1) with the multi-step mode as real score and a critic (fake score) trained on the few-step outputs;
  4. ``L = w_fm L_fm + w_distill L_distill (+ w_critic L_critic)``, one optimiser.

Gradient flows only through the target block's forwards; the history is produced without autograd and the
cache stores detached keys/values, so nothing flows into the past. The samplers, caches and mode values are in
:mod:`omniforcing.sampling.dual_mode` (shared with generation); this module holds the losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from omniforcing.diffusion.flow import add_noise, velocity_target, x0_from_velocity
from omniforcing.diffusion.samplers import Denoiser, fresh_noise, sample_euler
from omniforcing.diffusion.schedules import euler_schedule
from omniforcing.diffusion.time_samplers import LogitNormalTimeSampler, TimeSampler
from omniforcing.methods.dmd import normalised_direction, surrogate_loss
from omniforcing.methods.flow_matching import condition_drop_mask, weighted_mse
from omniforcing.models.layout import BlockLayout
from omniforcing.models.protocol import AVBackbone
from omniforcing.sampling.blocks import commit_block, denoise_block
from omniforcing.sampling.dual_mode import (DualModes, HistoryCaches, HistoryFromRealClip, HistorySource,
                                            latents_device, new_history_caches)
from omniforcing.sampling.few_step import draw_renoise
from omniforcing.sampling.guidance import Branch, clip_time
from omniforcing.sampling.schedule import BlockTimes
from omniforcing.types import AVLatents

Distillation = Literal["trajectory", "dmd"]
DistillInput = Literal["noised_real", "rollout"]


def block_latents(x: AVLatents, layout: BlockLayout, block: int) -> AVLatents:
    """The latents of macro-block ``block`` of a whole clip."""
    video_slice, audio_slice = layout.block_slices(block)
    return AVLatents(None if x.video is None else x.video[:, video_slice],
                     None if x.audio is None else x.audio[:, audio_slice])


def clip_layout(network: AVBackbone, x: AVLatents) -> BlockLayout:
    """Block layout of clip latents under the network's prefix layout."""
    return network.layout(None if x.video is None else x.video.shape[1], None if x.audio is None else x.audio.shape[1])


def dmd_generator_loss(x_hat: Tensor, real_x0: Tensor, fake_x0: Tensor) -> Tensor:
    """DMD surrogate whose gradient w.r.t. ``x_hat`` is the normalised ``fake - real`` direction (§3.1, steps 4-6).

    The shared DMD math of :mod:`omniforcing.methods.dmd` (:func:`normalised_direction`, :func:`surrogate_loss`).

    Args:
        x_hat: generated sample with gradient, ``(B, ...)``.
        real_x0: real-score clean estimate of the noised sample (no gradient), same shape.
        fake_x0: critic (fake-score) clean estimate, same shape.
    """
    return surrogate_loss(x_hat, normalised_direction(x_hat.detach(), real_x0, fake_x0))


@dataclass
class MutualForcingStep:
    """What one training step computed.

    Args:
        losses: ``loss`` (the weighted sum) and its parts (``loss_fm``, ``loss_distill``, per modality, ...).
        history_blocks: number of history blocks rolled out (= index of the trained real block).
        teacher_forced: the history was the real clip (ablation) rather than the few-step rollout.
        distill_time: flow time at which the few-step mode was distilled.
        history: the history blocks' latents (produced without autograd).
    """

    losses: dict[str, Tensor]
    history_blocks: int
    teacher_forced: bool
    distill_time: float
    history: list[AVLatents] = field(default_factory=list)


class MutualForcing:
    """The Mutual Forcing training objective (module docstring; ALGORITHMS.md §7.3).

    Args:
        time_sampler: flow time of the multi-step flow-matching loss (one per clip).
        min_history_blocks: fewest history blocks rolled out before the trained block.
        max_history_blocks: most history blocks (``None`` = as many as the clip allows, ``num_blocks - 1``).
        teacher_forcing_probability: probability that a step uses the real clip as history (ablation; 0 = the
            history always comes from the few-step mode).
        history: how the few-step mode writes the history (``None`` = :class:`HistoryFromRealClip` with its
            defaults; :class:`~omniforcing.sampling.dual_mode.HistoryFromNoise` is the ablation).
        distillation: ``"trajectory"`` (regress onto the multi-step ODE endpoint) or ``"dmd"`` (distribution
            matching with a critic; the module then owns a critic network).
        distill_times: flow times the few-step mode is distilled at (``None`` = the few-step grid); one per step.
        teacher_steps: Euler steps of the multi-step mode from the distillation time to 0 (trajectory target).
        distill_input: ``"noised_real"`` (the real block noised to the distillation time) or ``"rollout"`` (the
            few-step sampler's own state at that time, Self-Forcing-style backward simulation).
        fm_weight: weight of the multi-step flow-matching loss.
        distill_weight: weight of the few-step distillation loss.
        critic_weight: weight of the critic's flow-matching loss (``"dmd"`` only).
        video_weight: weight of the video part of every loss.
        audio_weight: weight of the audio part of every loss.
        condition_dropout: probability that a clip's caption is the null caption for the whole step (its history
            is then unconditional too, as the unconditional CFG branch at inference).
        dmd_time_min: smallest flow time at which the DMD scores are evaluated.
        dmd_time_max: largest one.
    """

    def __init__(
        self,
        time_sampler: TimeSampler | None = None,
        min_history_blocks: int = 0,
        max_history_blocks: int | None = None,
        teacher_forcing_probability: float = 0.0,
        history: HistorySource | None = None,
        distillation: Distillation = "trajectory",
        distill_times: list[float] | None = None,
        teacher_steps: int = 8,
        distill_input: DistillInput = "noised_real",
        fm_weight: float = 1.0,
        distill_weight: float = 1.0,
        critic_weight: float = 1.0,
        video_weight: float = 1.0,
        audio_weight: float = 1.0,
        condition_dropout: float = 0.1,
        dmd_time_min: float = 0.02,
        dmd_time_max: float = 0.98,
    ) -> None:
        if min_history_blocks < 0 or (max_history_blocks is not None and max_history_blocks < min_history_blocks):
            raise ValueError(f"need 0 <= min_history_blocks <= max_history_blocks, got {min_history_blocks}, "
                             f"{max_history_blocks}")
        if distillation not in ("trajectory", "dmd"):
            raise ValueError(f"distillation must be 'trajectory' or 'dmd', got {distillation!r}")
        if distill_input not in ("noised_real", "rollout"):
            raise ValueError(f"distill_input must be 'noised_real' or 'rollout', got {distill_input!r}")
        if distill_times is not None and (not distill_times or not all(0 < t <= 1 for t in distill_times)):
            raise ValueError(f"distill_times must be non-empty values in (0, 1], got {distill_times}")
        if teacher_steps < 1 or not 0.0 <= teacher_forcing_probability <= 1.0:
            raise ValueError(f"invalid teacher_steps={teacher_steps} or teacher_forcing_probability="
                             f"{teacher_forcing_probability}")
        if not 0.0 < dmd_time_min < dmd_time_max < 1.0:
            raise ValueError(f"need 0 < dmd_time_min < dmd_time_max < 1, got {dmd_time_min}, {dmd_time_max}")
        self.time_sampler = time_sampler or LogitNormalTimeSampler()
        self.min_history_blocks, self.max_history_blocks = min_history_blocks, max_history_blocks
        self.teacher_forcing_probability = teacher_forcing_probability
        self.history = history or HistoryFromRealClip()
        self.distillation, self.distill_input = distillation, distill_input
        self.distill_times = None if distill_times is None else tuple(float(t) for t in distill_times)
        self.teacher_steps = teacher_steps
        self.fm_weight, self.distill_weight, self.critic_weight = fm_weight, distill_weight, critic_weight
        self.video_weight, self.audio_weight = video_weight, audio_weight
        self.condition_dropout = condition_dropout
        self.dmd_time_min, self.dmd_time_max = dmd_time_min, dmd_time_max

    @property
    def needs_critic(self) -> bool:
        """Whether the objective trains a critic (fake score) next to the network."""
        return self.distillation == "dmd"

    # ---------------------------------------------------------------- random choices
    def draw_history_blocks(self, num_blocks: int, generator: torch.Generator | None) -> int:
        """Number of history blocks, uniform in ``[min, min(max, num_blocks - 1)]`` (OURS: uniform).

        Pass a generator shared across ranks: the value changes the graph, so every rank must draw the same.
        """
        high = num_blocks - 1 if self.max_history_blocks is None else min(self.max_history_blocks, num_blocks - 1)
        if high < self.min_history_blocks:
            raise ValueError(f"clips of {num_blocks} macro-blocks cannot hold {self.min_history_blocks} history "
                             "blocks plus the trained block; use longer clips or lower min_history_blocks")
        return int(torch.randint(self.min_history_blocks, high + 1, (1,), generator=generator))

    def draw_teacher_forcing(self, generator: torch.Generator | None) -> bool:
        """Whether this step's history is the real clip (ablation); drawn from the shared generator."""
        return bool(torch.rand((), generator=generator) < self.teacher_forcing_probability)

    def draw_distill_time(self, modes: DualModes, generator: torch.Generator | None) -> float:
        """One distillation time per step from ``distill_times`` (default: the few-step grid)."""
        times = self.distill_times or modes.few_step_times
        return float(times[int(torch.randint(len(times), (1,), generator=generator))])

    # ---------------------------------------------------------------- the step
    def loss(self, network: AVBackbone, x0: AVLatents, captions: list[str], modes: DualModes, *,
             generator: torch.Generator | None = None, shared_generator: torch.Generator | None = None,
             critic: AVBackbone | None = None) -> MutualForcingStep:
        """One Mutual Forcing step on clean clip latents (video ``(B, Tv, C, h, w)``, audio ``(B, Ta, C)``).

        Args:
            network: the causal, step-size-conditioned backbone (both modes).
            x0: clean latents of whole clips (one modality may be ``None``: uni-modal training).
            captions: ``B`` prompts.
            modes: the two samplers' settings.
            generator: per-rank randomness (noise, times, caption dropout).
            shared_generator: randomness identical on every rank (number of history blocks, teacher forcing).
            critic: the fake-score network, required by ``distillation="dmd"``.

        Returns:
            The losses (``loss`` is what to backpropagate) and the step's random choices.
        """
        if self.needs_critic and critic is None:
            raise ValueError("distillation='dmd' needs a critic network")
        layout = clip_layout(network, x0)
        history_blocks = self.draw_history_blocks(layout.num_blocks, shared_generator)
        teacher_forced = self.draw_teacher_forcing(shared_generator)
        drop = condition_drop_mask(x0.batch_size, self.condition_dropout, generator, latents_device(x0))
        caches = new_history_caches(network, captions, modes, drop=drop, guided=modes.guided,
                                    critic=critic if self.needs_critic else None)
        history = self.roll_out_history(caches, x0, layout, history_blocks, teacher_forced, modes, generator,
                                        shared_generator)
        target = block_latents(x0, layout, history_blocks)
        losses = _prefixed("fm", self.flow_matching_loss(caches.cond, target, history_blocks, modes, generator))
        distill_time = self.draw_distill_time(modes, generator)
        losses.update(self.distillation_losses(caches, target, history_blocks, distill_time, modes, generator))
        total = self.fm_weight * losses["loss_fm"] + self.distill_weight * losses["loss_distill"]
        if "loss_critic" in losses:
            total = total + self.critic_weight * losses["loss_critic"]
        losses = {"loss": total, **losses}
        return MutualForcingStep(losses, history_blocks, teacher_forced, distill_time, history)

    @torch.no_grad()
    def roll_out_history(self, caches: HistoryCaches, x0: AVLatents, layout: BlockLayout, count: int,
                         teacher_forced: bool, modes: DualModes, generator: torch.Generator | None,
                         shared_generator: torch.Generator | None = None) -> list[AVLatents]:
        """Blocks ``0 .. count - 1`` written by :attr:`history` (or the real clip), each committed to every cache."""
        blocks = caches.generator(modes, video=x0.video is not None, audio=x0.audio is not None,
                                  dtype=x0.items()[0][1].dtype)
        history = []
        for block in range(count):
            real = block_latents(x0, layout, block)
            if teacher_forced:
                commit_block(caches.branches, block, real, context_time=modes.context_time,
                             context_noise=blocks.context_noise(real, generator), step_size=blocks.step_size)
                clean = real
            else:
                clean = self.history.write_block(blocks, real, block, generator, shared_generator)
            history.append(clean)
        return history

    def flow_matching_loss(self, cond: Branch, target: AVLatents, block: int, modes: DualModes,
                           generator: torch.Generator | None) -> dict[str, Tensor]:
        """Multi-step mode on the real block against the self-generated history (§2.1 objective)."""
        t = self.time_sampler((target.batch_size,), generator=generator).to(latents_device(target))
        eps = target.map(lambda m: fresh_noise(m, generator))
        xt = target.zip_map(eps, lambda m, e: add_noise(m, e, t))
        step = modes.step_size("multi_step", target.batch_size, latents_device(target))
        v = cond.velocity(xt, clip_time(t, xt), block=block, step_size=step)
        return weighted_mse(v, target.zip_map(eps, velocity_target), self.video_weight, self.audio_weight)

    @staticmethod
    def multi_step_velocity(caches: HistoryCaches, modes: DualModes, block: int, batch: int,
                            device: torch.device) -> Denoiser:
        """``denoiser(x, t)`` of the multi-step mode (with CFG when configured) for ``block``."""
        denoiser = caches.multi_step_denoiser(modes)
        step = modes.step_size("multi_step", batch, device)
        return lambda x, t: denoiser.velocity(x, clip_time(t, x), block=block, step_size=step)

    def distillation_losses(self, caches: HistoryCaches, target: AVLatents, block: int, time: float,
                            modes: DualModes, generator: torch.Generator | None) -> dict[str, Tensor]:
        """Few-step mode distilled from the multi-step mode at flow time ``time`` (trajectory or DMD)."""
        batch, device = target.batch_size, latents_device(target)
        t = torch.full((batch,), time, device=device)
        x_t = self.distill_input_latents(caches, target, block, time, modes, generator)
        cond = caches.cond
        v = cond.velocity(x_t, clip_time(t, x_t), block=block, step_size=modes.step_size("few_step", batch, device))
        x0_few = x_t.zip_map(v, lambda xm, vm: x0_from_velocity(xm, vm, t))
        if self.distillation == "dmd":
            return self.dmd_losses(caches, x0_few, block, modes, generator)
        with torch.no_grad():
            schedule = time * euler_schedule(self.teacher_steps)
            x0_multi = sample_euler(self.multi_step_velocity(caches, modes, block, batch, device), x_t, schedule)
        return _prefixed("distill", weighted_mse(x0_few, x0_multi, self.video_weight, self.audio_weight))

    @torch.no_grad()
    def distill_input_latents(self, caches: HistoryCaches, target: AVLatents, block: int, time: float,
                              modes: DualModes, generator: torch.Generator | None) -> AVLatents:
        """The few-step mode's input at ``time``: the real block noised, or the few-step sampler's own state."""
        t = torch.full((target.batch_size,), time, device=latents_device(target))
        noise = target.map(lambda m: fresh_noise(m, generator))
        if self.distill_input == "noised_real":
            return target.zip_map(noise, lambda m, e: add_noise(m, e, t))
        earlier = tuple(s for s in modes.few_step_times if s > time)
        if not earlier:
            return noise
        times = BlockTimes.of(earlier, video=noise.video is not None, audio=noise.audio is not None)
        renoise = draw_renoise(noise, times, generator)
        estimate = denoise_block(caches.few_step_denoiser(), block, noise, renoise, times,
                                 step_size=modes.step_size("few_step", target.batch_size, latents_device(target)))
        return estimate.map(lambda m: add_noise(m, fresh_noise(m, generator), t))

    def dmd_losses(self, caches: HistoryCaches, x_hat: AVLatents, block: int, modes: DualModes,
                   generator: torch.Generator | None) -> dict[str, Tensor]:
        """DMD generator loss (multi-step mode = real score, critic = fake score) and the critic's loss (§3.1-3.2)."""
        batch, device = x_hat.batch_size, latents_device(x_hat)
        critic = caches.critic
        step = modes.step_size("multi_step", batch, device)

        def noised(clean: AVLatents) -> tuple[AVLatents, AVLatents, Tensor]:
            u = torch.rand(batch, generator=generator).to(device)
            t = self.dmd_time_min + (self.dmd_time_max - self.dmd_time_min) * u
            eps = clean.map(lambda m: fresh_noise(m, generator))
            return clean.zip_map(eps, lambda m, e: add_noise(m, e, t)), eps, t

        clean = x_hat.detach()
        with torch.no_grad():
            x_t, _, t = noised(clean)
            real_v = self.multi_step_velocity(caches, modes, block, batch, device)(x_t, t)
            fake_v = critic.velocity(x_t, clip_time(t, x_t), block=block, step_size=step)
            real_x0 = x_t.zip_map(real_v, lambda xm, vm: x0_from_velocity(xm, vm, t))
            fake_x0 = x_t.zip_map(fake_v, lambda xm, vm: x0_from_velocity(xm, vm, t))
        losses: dict[str, Tensor] = {}
        total: Tensor | None = None
        for (name, xm), (_, rm), (_, fm) in zip(x_hat.items(), real_x0.items(), fake_x0.items()):
            losses[f"loss_distill_{name}"] = dmd_generator_loss(xm, rm, fm)
            term = (self.video_weight if name == "video" else self.audio_weight) * losses[f"loss_distill_{name}"]
            total = term if total is None else total + term
        losses["loss_distill"] = total
        x_t, eps, t = noised(clean)
        critic_v = critic.velocity(x_t, clip_time(t, x_t), block=block, step_size=step)
        critic_losses = weighted_mse(critic_v, clean.zip_map(eps, velocity_target), self.video_weight,
                                     self.audio_weight)
        return {**losses, **_prefixed("critic", critic_losses)}


def _prefixed(name: str, losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """``{"loss": a, "loss_video": b}`` -> ``{"loss_<name>": a, "loss_<name>_video": b}``."""
    return {key.replace("loss", f"loss_{name}", 1): value for key, value in losses.items()}
