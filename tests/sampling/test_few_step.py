"""The one few-step loop: exact x0 chain, fresh noise in the loop's order, exit step, checks."""

from __future__ import annotations

import pytest
import torch

from omniforcing.diffusion.samplers import fresh_noise
from omniforcing.sampling.few_step import draw_renoise, few_step, sample_few_step
from omniforcing.sampling.schedule import BlockTimes, time_tensor
from omniforcing.types import AVLatents


def target_denoiser(target: AVLatents, seen: list):
    """A velocity whose x0 prediction is exactly ``target`` (``v = (x - x0) / t``); records its inputs."""
    def denoiser(x: AVLatents, t: torch.Tensor) -> AVLatents:
        seen.append((float(t[0]), x, torch.is_grad_enabled()))
        return x.zip_map(target, lambda xm, x0: (xm - x0) / t.view(-1, *([1] * (xm.dim() - 1))))
    return denoiser


def test_few_step_sampler_renoises_with_fresh_noise_on_the_given_grid():
    target = AVLatents(torch.full((2, 3, 4), 0.5), torch.full((2, 5, 2), -1.0))
    seen: list[tuple[float, AVLatents]] = []

    def denoiser(x: AVLatents, t: torch.Tensor) -> AVLatents:
        seen.append((float(t[0]), x))
        # velocity whose x0 prediction is exactly `target`: v = (x - x0) / t
        return x.zip_map(target, lambda xm, x0: (xm - x0) / t.view(-1, 1, 1))

    ts = [1.0, 0.75, 0.5, 0.25]
    noise = AVLatents(torch.randn(2, 3, 4), torch.randn(2, 5, 2))
    out = sample_few_step(denoiser, noise, ts, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out.video, target.video)
    torch.testing.assert_close(out.audio, target.audio)
    assert [t for t, _ in seen] == ts
    # the input of step k+1 is the target re-noised to t_{k+1} with noise from the same generator stream
    g = torch.Generator().manual_seed(7)
    for (t_next, x_next) in seen[1:]:
        eps_v, eps_a = fresh_noise(target.video, g), fresh_noise(target.audio, g)
        torch.testing.assert_close(x_next.video, (1 - t_next) * target.video + t_next * eps_v)
        torch.testing.assert_close(x_next.audio, (1 - t_next) * target.audio + t_next * eps_a)


def test_exit_step_keeps_the_gradient_of_that_step_only_and_stops_the_draws_there():
    target = AVLatents(torch.full((1, 3, 4), 0.5, requires_grad=True), torch.full((1, 5, 2), -1.0))
    seen: list = []
    noise = AVLatents(torch.randn(1, 3, 4), torch.randn(1, 5, 2))
    generator = torch.Generator().manual_seed(0)
    out = sample_few_step(target_denoiser(target, seen), noise, [1.0, 0.75, 0.5, 0.25], generator, exit_step=2)
    assert [grad for _, _, grad in seen] == [False, False, True] and out.video.requires_grad
    # two re-noisings (after steps 0 and 1), nothing after the exit: the generator continues from there
    expected = torch.Generator().manual_seed(0)
    for _ in range(2):
        fresh_noise(noise.video, expected), fresh_noise(noise.audio, expected)
    assert torch.equal(torch.randn(3, generator=generator), torch.randn(3, generator=expected))
    with torch.no_grad():  # exiting at the last step is the whole sampler
        last = sample_few_step(target_denoiser(target, []), noise, [1.0, 0.5], torch.Generator().manual_seed(4),
                               exit_step=1)
        full = sample_few_step(target_denoiser(target, []), noise, [1.0, 0.5], torch.Generator().manual_seed(4))
    torch.testing.assert_close(last.video, full.video)
    with pytest.raises(ValueError, match="exit_step 4 outside"):
        sample_few_step(target_denoiser(target, []), noise, [1.0, 0.5, 0.25, 0.1], exit_step=4)


def test_asymmetric_times_renoise_each_modality_on_its_own_schedule():
    times = BlockTimes.of([1.0, 0.6, 0.3], [1.0, 0.5])
    like = AVLatents(torch.zeros(1, 2, 3), torch.zeros(1, 4, 2))
    renoise = draw_renoise(like, times, torch.Generator().manual_seed(1))
    # after step 0 both re-noise (video then audio); after step 1 only video (audio's last step was 1)
    assert [(r.video is not None, r.audio is not None) for r in renoise] == [(True, True), (True, False)]
    g = torch.Generator().manual_seed(1)
    assert torch.equal(renoise[0].video, torch.randn(1, 2, 3, generator=g))
    assert torch.equal(renoise[0].audio, torch.randn(1, 4, 2, generator=g))
    assert torch.equal(renoise[1].video, torch.randn(1, 2, 3, generator=g))
    seen: list = []

    def velocity(x: AVLatents, t: AVLatents, _exit: bool) -> AVLatents:
        seen.append((round(float(t.video[0]), 4), round(float(t.audio[0]), 4)))
        return x.map(torch.zeros_like)  # x0 = x: the chain keeps re-noising its own input

    out = few_step(velocity, AVLatents(torch.ones(1, 2, 3), torch.ones(1, 4, 2)), times, renoise)
    assert seen == [(1.0, 1.0), (0.6, 0.5), (0.3, 0.0)]  # a finished modality is held clean at t = 0
    torch.testing.assert_close(out.audio, 0.5 * torch.ones(1, 4, 2) + 0.5 * renoise[0].audio)


def test_few_step_times_are_checked():
    noise = AVLatents(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_few_step(lambda x, t: x, noise, [1.0, 0.0])
    with pytest.raises(ValueError, match="decreasing"):
        BlockTimes.of([1.0, 0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="same few-step times"):
        few_step(lambda x, t, e: x, AVLatents(torch.zeros(1, 1), torch.zeros(1, 1)), BlockTimes.of([1.0, 0.5], [1.0]),
                 (), exit_step=0)


def test_time_tensors_made_in_inference_mode_serve_training_later():
    """The memoised flow times may first be made by a stream (inference mode) and then used by a training step:
    they must not be inference tensors, and each call returns the same tensor."""
    with torch.inference_mode():
        t = time_tensor(0.625, 3, torch.device("cpu"))
    assert not t.is_inference() and t.dtype == torch.float32 and torch.equal(t, torch.full((3,), 0.625))
    assert time_tensor(0.625, 3, torch.device("cpu")) is t
    x = torch.ones(3, requires_grad=True)
    (x * t).sum().backward()  # an inference tensor here would raise
    assert torch.equal(x.grad, t)
