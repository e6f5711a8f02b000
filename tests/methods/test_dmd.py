"""DMD: the generator gradient is the analytic normalised difference, the critic loss is the flow loss."""

from __future__ import annotations

import torch

from omniforcing.diffusion.time_samplers import UniformTimeSampler
from omniforcing.methods.dmd import DistributionMatching, normalised_direction, surrogate_loss
from omniforcing.methods.flow_matching import FlowMatching
from omniforcing.models.transformer import DualStreamTransformer
from omniforcing.sampling.few_step import sample_few_step
from omniforcing.types import AVLatents

TINY = dict(video_channels=4, video_grid=(2, 2), audio_channels=3, video_width=16, audio_width=16, depth=1,
            video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=16)


def perturbed_model(seed: int = 0) -> DualStreamTransformer:
    torch.manual_seed(seed)
    model = DualStreamTransformer(**TINY)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)  # zero-init heads/gates would output 0
    return model


class LinearScore:
    """A denoiser whose clean estimate is ``scale * x_t + offset`` (velocity ``(x_t - x0) / t``); records inputs."""

    def __init__(self, scale: float, offset: float) -> None:
        self.scale, self.offset, self.inputs = scale, offset, []

    def x0(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.offset

    def __call__(self, x: AVLatents, t: torch.Tensor) -> AVLatents:
        self.inputs.append((x, t))
        return x.map(lambda m: (m - self.x0(m)) / t.reshape(-1, *([1] * (m.dim() - 1))))


def generated(batch: int = 3) -> AVLatents:
    gen = torch.Generator().manual_seed(5)
    return AVLatents(torch.randn(batch, 4, 4, 2, 2, generator=gen).requires_grad_(),
                     torch.randn(batch, 26, 3, generator=gen).requires_grad_())


def test_generator_gradient_is_the_analytic_normalised_difference():
    x = generated()
    real, fake = LinearScore(0.5, 0.1), LinearScore(0.8, -0.2)
    objective = DistributionMatching(video_weight=2.0, audio_weight=0.5)
    losses = objective.generator_loss(x, real, fake, torch.Generator().manual_seed(0))
    losses["loss_dmd"].backward()
    (xt, t), = real.inputs
    assert torch.equal(fake.inputs[0][1], t) and t.shape == (3,)  # one time per clip, shared by both scores
    assert ((t >= 0.02) & (t <= 0.98)).all()  # the default clamp
    for name, weight in (("video", 2.0), ("audio", 0.5)):
        xm, xtm = getattr(x, name).detach(), getattr(xt, name)
        real_x0, fake_x0 = real.x0(xtm), fake.x0(xtm)
        norm = (xm - real_x0).abs().mean(dim=tuple(range(1, xm.dim())), keepdim=True)  # per sample
        expected = weight * (fake_x0 - real_x0) / norm / xm.numel()
        torch.testing.assert_close(getattr(x, name).grad, expected, rtol=1e-5, atol=1e-8)


def test_noisy_input_is_x_noised_at_one_time_shared_by_both_modalities():
    x = generated(2)
    real = LinearScore(0.5, 0.0)
    objective = DistributionMatching()
    objective.generator_loss(x, real, LinearScore(0.5, 0.0), torch.Generator().manual_seed(1))
    (xt, t), = real.inputs
    replay = torch.Generator().manual_seed(1)  # t first, then the noise of each modality
    t_want = objective.time_sampler((2,), generator=replay)
    torch.testing.assert_close(t, t_want)
    for name in ("video", "audio"):
        xm = getattr(x, name).detach()
        eps = torch.randn(xm.shape, generator=replay)
        tt = t_want.reshape(-1, *[1] * (xm.dim() - 1))
        torch.testing.assert_close(getattr(xt, name), (1 - tt) * xm + tt * eps)


def test_equal_scores_give_no_gradient_and_zero_normaliser_gives_no_nan():
    x = generated()
    same = LinearScore(0.7, 0.0)
    DistributionMatching().generator_loss(x, same, same, torch.Generator().manual_seed(0))["loss_dmd"].backward()
    assert torch.count_nonzero(x.video.grad) == 0 and torch.count_nonzero(x.audio.grad) == 0
    direction = normalised_direction(torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    assert torch.isfinite(direction).all() and torch.count_nonzero(direction) == 0


def test_surrogate_gradient_is_direction_over_numel():
    x = torch.randn(2, 5, requires_grad=True)
    direction = torch.randn(2, 5)
    surrogate_loss(x, direction).backward()
    torch.testing.assert_close(x.grad, direction / 10)


def test_critic_loss_is_the_flow_loss_on_generated_samples():
    critic = perturbed_model()
    x = generated(2)
    captions = ["a red circle bounces", "a blue square thuds"]
    sampler = UniformTimeSampler(t_min=0.1, t_max=0.9)
    objective = DistributionMatching(time_sampler=sampler, video_weight=1.5, audio_weight=0.25)
    got = objective.critic_loss(x, objective.fake_score(critic, critic.encode_text(captions)),
                                torch.Generator().manual_seed(3))
    flow = FlowMatching(time_sampler=sampler, video_weight=1.5, audio_weight=0.25, condition_dropout=0.0)
    want = flow.loss(critic, x.detach(), captions, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got["loss_critic"], want["loss"])
    torch.testing.assert_close(got["loss_critic_video"], want["loss_video"])
    got["loss_critic"].backward()
    assert x.video.grad is None and x.audio.grad is None  # generated samples are data for the critic
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


def test_generator_loss_leaves_teacher_and_critic_without_gradients():
    teacher, critic, student = perturbed_model(0), perturbed_model(1), perturbed_model(2)
    captions = ["a red circle bounces"]
    gen = torch.Generator().manual_seed(0)
    noise = AVLatents(torch.randn(1, 4, 4, 2, 2, generator=gen), torch.randn(1, 26, 3, generator=gen))
    objective = DistributionMatching(video_cfg=3.0, audio_cfg=5.0)
    x = sample_few_step(objective.fake_score(student, student.encode_text(captions)), noise,
                        [1.0, 0.75, 0.5, 0.25], gen, exit_step=2)
    null = teacher.encode_text(captions, drop=torch.ones(1, dtype=torch.bool))
    losses = objective.generator_loss(x, objective.real_score(teacher, teacher.encode_text(captions), null),
                                      objective.fake_score(critic, critic.encode_text(captions)), gen)
    losses["loss_dmd"].backward()
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in critic.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    assert {"dmd_direction_video", "dmd_direction_audio", "dmd_time"} <= set(losses)
