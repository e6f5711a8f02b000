"""Flow-matching math, schedules, time samplers, guidance and both samplers."""

from __future__ import annotations

import math

import pytest
import torch

from omniforcing.diffusion import (
    LogitNormalTimeSampler,
    UniformTimeSampler,
    add_noise,
    classifier_free_guidance,
    eps_from_velocity,
    euler_schedule,
    expand_time,
    sample_euler,
    shift_time,
    velocity_from_x0,
    velocity_target,
    x0_from_velocity,
)
from omniforcing.types import AVLatents


def test_conversions_are_exact_inverses():
    x0, eps = torch.randn(3, 5, 4, 2, 2, dtype=torch.float64), torch.randn(3, 5, 4, 2, 2, dtype=torch.float64)
    t = torch.rand(3, 5, dtype=torch.float64) * 0.98 + 0.01
    xt = add_noise(x0, eps, t)
    v = velocity_target(x0, eps)
    torch.testing.assert_close(x0_from_velocity(xt, v, t), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_from_velocity(xt, v, t), eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(velocity_from_x0(xt, x0, t), v, rtol=0, atol=1e-10)


def test_add_noise_endpoints_and_per_frame_time():
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    t = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 0.25]])
    xt = add_noise(x0, eps, t)
    torch.testing.assert_close(xt[0, 0], x0[0, 0])
    torch.testing.assert_close(xt[0, 1], eps[0, 1])
    torch.testing.assert_close(xt[1, 2], 0.75 * x0[1, 2] + 0.25 * eps[1, 2])


def test_expand_time_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not prefix"):
        expand_time(torch.zeros(2, 4), torch.zeros(2, 3, 5))


def test_schedule_endpoints_monotone_and_shift():
    ts = euler_schedule(8, shift=3.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and torch.all(ts[1:] < ts[:-1])
    assert torch.all(ts[1:-1] > torch.linspace(1, 0, 9, dtype=torch.float64)[1:-1])  # shifted towards noise
    torch.testing.assert_close(shift_time(torch.tensor(0.5), 1.0), torch.tensor(0.5, dtype=torch.float64))
    assert float(shift_time(0.5, 3.0)) == pytest.approx(0.75)


@pytest.mark.parametrize("sampler", [UniformTimeSampler(0.1, 0.9), LogitNormalTimeSampler(0.5, 1.0, 2.0, 0.1, 0.1, 0.9)])
def test_time_samplers_range_shape_and_determinism(sampler):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = sampler((64, 5), generator=g1), sampler((64, 5), generator=g2)
    assert a.shape == (64, 5) and a.dtype == torch.float32
    assert float(a.min()) >= 0.1 and float(a.max()) <= 0.9
    torch.testing.assert_close(a, b)


def test_logit_normal_mean_shifts_mass_to_noise():
    g = torch.Generator().manual_seed(0)
    low = LogitNormalTimeSampler(mean=-1.0, uniform_fraction=0.0)((20000,), generator=g).mean()
    high = LogitNormalTimeSampler(mean=1.0, uniform_fraction=0.0)((20000,), generator=g).mean()
    assert float(high) > float(low) + 0.2


def test_time_sampler_rejects_bad_range():
    with pytest.raises(ValueError, match="t_min"):
        UniformTimeSampler(0.5, 0.4)


def test_cfg_convention_matches_documented_formula():
    cond, uncond = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))


def _gaussian_velocity(mu: float, s: float):
    """Exact velocity E[eps - x0 | x_t = x] for data x0 ~ N(mu, s^2) under x_t = (1 - t) x0 + t eps."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = 1 - expand_time(t, x)
        tt = expand_time(t, x)
        var = a**2 * s**2 + tt**2
        resid = x - a * mu
        return tt / var * resid - (mu + a * s**2 / var * resid)

    return velocity


def test_euler_sampler_recovers_a_known_gaussian():
    mu_v, s_v, mu_a, s_a = 1.5, 0.5, -0.7, 1.3
    vel_v, vel_a = _gaussian_velocity(mu_v, s_v), _gaussian_velocity(mu_a, s_a)

    def denoiser(x: AVLatents, t: torch.Tensor) -> AVLatents:
        return AVLatents(vel_v(x.video, t), vel_a(x.audio, t))

    g = torch.Generator().manual_seed(0)
    noise = AVLatents(torch.randn(20000, 1, generator=g, dtype=torch.float64),
                      torch.randn(20000, 1, generator=g, dtype=torch.float64))
    out = sample_euler(denoiser, noise, euler_schedule(200))
    assert float(out.video.mean()) == pytest.approx(mu_v, abs=0.03)
    assert float(out.video.std()) == pytest.approx(s_v, abs=0.03)
    assert float(out.audio.mean()) == pytest.approx(mu_a, abs=0.05)
    assert float(out.audio.std()) == pytest.approx(s_a, abs=0.05)


def test_av_latents_zip_map_checks_modalities():
    with pytest.raises(ValueError, match="audio"):
        AVLatents(torch.zeros(1), torch.zeros(1)).zip_map(AVLatents(torch.zeros(1), None), torch.add)
    assert AVLatents(None, torch.ones(2, 3)).batch_size == 2
    assert math.isclose(float(AVLatents(torch.ones(1)).map(lambda x: 2 * x).video), 2.0)
