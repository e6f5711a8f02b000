"""ODE regression: the teacher's states sit exactly on the student's grid; audio inherits its block's level."""

from __future__ import annotations

import pytest
import torch

from omniforcing.diffusion.samplers import sample_euler
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.methods.ode_regression import (
    ODERegression,
    block_levels,
    gather_levels,
    student_grid,
    teacher_trajectory,
    trajectory_states,
)
from omniforcing.models.layout import BlockLayout
from omniforcing.types import AVLatents

from test_dmd import perturbed_model


@pytest.mark.parametrize(("steps", "shift", "times"), [(48, 1.0, [1.0, 0.75, 0.5, 0.25]),
                                                       (48, 5.0, [1.0, 0.75, 0.5, 0.25]),
                                                       (40, 3.0, [1.0, 0.906, 0.727, 0.421]),
                                                       (7, 1.0, [0.9, 0.3])])
def test_student_grid_contains_every_student_time_exactly(steps, shift, times):
    grid, indices = student_grid(steps, shift, times)
    assert grid.shape == (steps + 1,) and grid[0] == 1.0 and grid[-1] == 0.0
    assert (grid[1:] < grid[:-1]).all()
    assert [float(grid[i]) for i in indices] == times  # bitwise: no nearest-point approximation
    assert indices == sorted(indices)


def test_student_grid_rejects_times_too_close_for_the_steps():
    with pytest.raises(ValueError, match="use more steps"):
        student_grid(4, 1.0, [1.0, 0.74, 0.73])
    with pytest.raises(ValueError, match="strictly decreasing"):
        student_grid(48, 1.0, [0.5, 0.75])


def test_stored_states_are_the_euler_states_at_the_student_times():
    teacher = perturbed_model()
    captions = ["a red circle bounces", "ping"]
    gen = torch.Generator().manual_seed(0)
    noise = AVLatents(torch.randn(2, 4, 4, 2, 2, generator=gen), torch.randn(2, 26, 3, generator=gen))
    grid, indices = student_grid(8, 2.0, [1.0, 0.75, 0.5, 0.25])
    states = teacher_trajectory(teacher, captions, noise, grid, indices, video_cfg=2.0, audio_cfg=4.0)
    assert states.video.shape == (2, 5, 4, 4, 2, 2) and states.audio.shape == (2, 5, 26, 3)
    null = teacher.encode_text(captions, drop=torch.ones(2, dtype=torch.bool))
    denoiser = GuidedDenoiser(teacher, teacher.encode_text(captions), null, 2.0, 4.0, causal=False)
    with torch.no_grad():
        for level, index in enumerate([*indices, len(grid) - 1]):
            direct = sample_euler(denoiser, noise, grid[: index + 1])  # integrate straight to that grid point
            torch.testing.assert_close(states.video[:, level], direct.video, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(states.audio[:, level], direct.audio, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(states.video[:, 0], noise.video)  # t_0 = 1 is the noise itself


def test_trajectory_states_of_an_analytic_flow():
    """Velocity v = x (so dx/dt = x): Euler from t=1 with steps dt gives x * prod(1 + dt)."""
    x = AVLatents(torch.ones(1, 4, 1, 1, 1), None)
    grid, indices = student_grid(8, 1.0, [1.0, 0.5])
    states = trajectory_states(lambda y, t: y, x, grid, indices)
    factors = torch.cumprod(1 + (grid[1:] - grid[:-1]), 0)
    assert states.audio is None
    torch.testing.assert_close(states.video[0, :, 0, 0, 0, 0],
                               torch.stack([torch.tensor(1.0), factors[indices[1] - 1], factors[-1]]).float())


@pytest.mark.parametrize("prefix", ["v1", "v2"])
def test_audio_latents_inherit_the_level_of_their_block(prefix):
    layout = BlockLayout.for_seconds(4, prefix)
    video, audio = block_levels(layout, 8, 4, torch.Generator().manual_seed(0))
    assert video.shape == (8, layout.num_video) and audio.shape == (8, layout.num_audio)
    for block in range(layout.num_blocks):
        vs, as_ = layout.block_slices(block)
        block_level = video[:, vs.start]
        assert (video[:, vs] == block_level[:, None]).all() and (audio[:, as_] == block_level[:, None]).all()
    assert len(torch.unique(video[:, 0] * 10 + video[:, -1])) > 1  # blocks draw independently


def test_gather_levels_picks_each_latents_own_level():
    states = torch.arange(2 * 3 * 4).reshape(2, 3, 4).float()
    levels = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    torch.testing.assert_close(gather_levels(states, levels), torch.tensor([[0., 5., 10., 3.], [20., 21., 18., 15.]]))


class RecordingNetwork(torch.nn.Module):
    """Stands in for the student: records its inputs, predicts velocity 0 (so x0_hat = x_in)."""

    def __init__(self, prefix: str = "v1") -> None:
        super().__init__()
        self.prefix, self.calls = prefix, []
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def layout(self, num_video=None, num_audio=None):
        return BlockLayout.for_latents(num_video, num_audio, self.prefix)

    def encode_text(self, captions):
        return captions

    def forward(self, video, audio, t_video, t_audio, text, *, causal=None):
        self.calls.append(dict(video=video, audio=audio, t_video=t_video, t_audio=t_audio, causal=causal))
        return (None if video is None else video * self.scale), (None if audio is None else audio * self.scale)


def level_states(batch: int, num_levels: int, layout: BlockLayout) -> AVLatents:
    """States whose value is their level index (last level = the clean target, value 100)."""
    values = torch.tensor([*range(num_levels - 1), 100.0])
    return AVLatents(values.reshape(1, -1, 1, 1, 1, 1).expand(batch, -1, layout.num_video, 2, 1, 1).clone(),
                     values.reshape(1, -1, 1, 1).expand(batch, -1, layout.num_audio, 3).clone())


def test_one_parallel_causal_forward_with_block_levels_and_matching_times():
    network = RecordingNetwork()
    layout = network.layout(7)
    times = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    losses = ODERegression().loss(network, level_states(3, 5, layout), times, ["a"] * 3,
                                  torch.Generator().manual_seed(2))
    (call,) = network.calls
    assert call["causal"] is True
    video_level = call["video"][:, :, 0, 0, 0].long()
    audio_level = call["audio"][:, :, 0].long()
    assert (video_level <= 3).all()  # the clean level is never drawn by default
    torch.testing.assert_close(call["t_video"], times[video_level])
    torch.testing.assert_close(call["t_audio"], times[audio_level])
    for block in range(layout.num_blocks):
        vs, as_ = layout.block_slices(block)
        assert (audio_level[:, as_] == video_level[:, vs.start, None]).all()
    assert losses["loss"].item() > 0


def test_loss_only_where_t_is_positive_and_weighted_per_modality():
    network = RecordingNetwork()
    layout = network.layout(4)
    times = torch.tensor([0.8, 0.4, 0.0])
    objective = ODERegression(video_weight=2.0, audio_weight=0.5, include_clean=True)
    states = level_states(4, 3, layout)
    losses = objective.loss(network, states, times, ["a"] * 4, torch.Generator().manual_seed(0))
    call = network.calls[0]
    assert (call["t_video"] == 0).any() and (call["t_video"] > 0).any()  # both kinds drawn
    for name, weight in (("video", 2.0), ("audio", 0.5)):
        x, t = call[name], call[f"t_{name}"]
        mask = (t > 0).reshape(*t.shape, *[1] * (x.dim() - 2)).expand_as(x)
        expected = ((x - 100.0) ** 2 * mask).sum() / mask.sum()  # x0_hat = x (zero velocity), target 100
        torch.testing.assert_close(losses[f"loss_{name}"], expected)
    torch.testing.assert_close(losses["loss"], 2.0 * losses["loss_video"] + 0.5 * losses["loss_audio"])


def test_gradient_reaches_the_real_student():
    student = perturbed_model()
    student.causal = True
    layout = student.layout(4)
    gen = torch.Generator().manual_seed(0)
    states = AVLatents(torch.randn(2, 3, layout.num_video, 4, 2, 2, generator=gen),
                       torch.randn(2, 3, layout.num_audio, 3, generator=gen))
    losses = ODERegression().loss(student, states, torch.tensor([1.0, 0.5, 0.0]), ["a", "b"], gen)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and student.video.proj_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ending with the clean time 0"):
        ODERegression().loss(student, states, torch.tensor([1.0, 0.5, 0.25]), ["a", "b"], gen)


def test_uni_modal_pairs_use_the_same_block_levels():
    network = RecordingNetwork()
    layout = network.layout(7)
    states = level_states(2, 3, layout)
    losses = ODERegression().loss(network, AVLatents(None, states.audio), torch.tensor([1.0, 0.5, 0.0]), ["a"] * 2,
                                  torch.Generator().manual_seed(0))
    assert network.calls[0]["video"] is None and set(losses) == {"loss", "loss_audio", "mean_time"}
