"""Mutual Forcing objective and samplers: shared weights, gradient-free history, real-data flow matching, targets."""

from __future__ import annotations

import copy

import pytest
import torch

from omniforcing.inference.dual_mode import DualModes, dual_modes_from_config, stream_blocks
from omniforcing.methods.mutual_forcing import MutualForcing, block_latents, clip_layout, dmd_generator_loss
from omniforcing.models.transformer import DualStreamTransformer
from omniforcing.sampling.dual_mode import HistoryFromNoise, HistoryFromRealClip
from omniforcing.sampling.schedule import BlockTimes
from omniforcing.types import AVLatents

TINY = dict(video_channels=4, video_grid=(2, 2), audio_channels=3, video_width=32, audio_width=16, depth=2,
            video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=24)
CAPTIONS = ["a red ball bounces", "two cubes collide"]


def make_network(perturb: bool = True, zero_step_embedding: bool = False, seed: int = 0,
                 **overrides) -> DualStreamTransformer:
    """A tiny Mutual Forcing backbone; perturbed so zero-initialised gates and heads are active."""
    torch.manual_seed(seed)
    network = DualStreamTransformer(**{**TINY, "causal": True, "step_size_conditioning": True, **overrides})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in network.named_parameters():
            if perturb:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
            if zero_step_embedding and ".step.mlp.2." in name:
                param.zero_()
    return network


def clip_latents(seconds: int = 2, batch: int = 2, seed: int = 0) -> AVLatents:
    gen = torch.Generator().manual_seed(seed)
    return AVLatents(torch.randn(batch, 1 + 3 * seconds, 4, 2, 2, generator=gen),
                     torch.randn(batch, 1 + 25 * seconds, 3, generator=gen))


def run(objective: MutualForcing, network, x0: AVLatents, modes: DualModes | None = None, seed: int = 0,
        shared_seed: int = 100, critic=None):
    return objective.loss(network, x0, CAPTIONS[: x0.batch_size], modes or DualModes(),
                          generator=torch.Generator().manual_seed(seed),
                          shared_generator=torch.Generator().manual_seed(shared_seed), critic=critic)


def grads_of(loss: torch.Tensor, network: torch.nn.Module) -> dict[str, torch.Tensor]:
    network.zero_grad()
    loss.backward(retain_graph=True)
    return {n: p.grad.clone() for n, p in network.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_both_modes_train_the_same_parameters():
    network = make_network()
    params_before = {id(p) for p in network.parameters()}
    step = run(MutualForcing(condition_dropout=0.0, teacher_steps=2), network, clip_latents())
    fm = grads_of(step.losses["loss_fm"], network)
    distill = grads_of(step.losses["loss_distill"], network)
    shared = set(fm) & set(distill)
    # the backbone's attention and MLP weights receive gradient from both modes' losses
    assert any(n.startswith("layers.0.video.") for n in shared) and any(n.startswith("layers.1.audio.") for n in shared)
    assert {id(p) for p in network.parameters()} == params_before
    assert any(".step." in n for n in distill)  # the mode signal itself is trained


def test_modes_are_identical_until_the_step_embedding_learns():
    network = make_network(zero_step_embedding=True)
    x0 = clip_latents(seconds=1)
    modes = DualModes()
    text = network.encode_text(CAPTIONS)
    t = torch.full((2, x0.video.shape[1]), 0.6), torch.full((2, x0.audio.shape[1]), 0.6)

    def outputs(mode: str):
        with torch.no_grad():
            return network(x0.video, x0.audio, *t, text, step_size=modes.step_size(mode, 2, torch.device("cpu")))

    assert all(torch.equal(a, b) for a, b in zip(outputs("few_step"), outputs("multi_step")))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    step = run(MutualForcing(condition_dropout=0.0, teacher_steps=2), network, clip_latents(seconds=1))
    step.losses["loss"].backward()
    optimizer.step()
    few, multi = outputs("few_step"), outputs("multi_step")
    assert (few[0] - multi[0]).abs().max() > 1e-6 and (few[1] - multi[1]).abs().max() > 1e-6


def test_history_rollout_carries_no_gradient():
    network = make_network()
    calls = []
    network.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((kwargs["block"], kwargs.get("commit", False),
                                                   torch.is_grad_enabled())),
        with_kwargs=True)
    step = run(MutualForcing(min_history_blocks=2, teacher_steps=2), network, clip_latents())
    assert step.history_blocks == 2 and len(step.history) == 2
    assert all(not m.requires_grad for block in step.history for _, m in block.items())
    history_calls = [c for c in calls if c[0] < 2]
    assert history_calls and not any(grad for _, _, grad in history_calls)
    assert {c[1] for c in history_calls} == {False, True}  # denoising steps and clean-context commits
    grad_calls = [c for c in calls if c[2]]
    assert len(grad_calls) == 2 and all(block == 2 and not commit for block, commit, _ in grad_calls)  # FM + few


def test_history_length_varies_with_the_shared_generator():
    objective = MutualForcing()
    draws = [objective.draw_history_blocks(4, torch.Generator().manual_seed(s)) for s in range(40)]
    assert set(draws) == {0, 1, 2, 3}
    again = [objective.draw_history_blocks(4, torch.Generator().manual_seed(s)) for s in range(40)]
    assert draws == again
    bounded = MutualForcing(min_history_blocks=1, max_history_blocks=2)
    assert {bounded.draw_history_blocks(9, torch.Generator().manual_seed(s)) for s in range(40)} == {1, 2}
    with pytest.raises(ValueError, match="cannot hold 3 history"):
        MutualForcing(min_history_blocks=3).draw_history_blocks(3, None)


def shifted(x0: AVLatents, layout, blocks: tuple[int, ...], amount: float = 3.0) -> AVLatents:
    """``x0`` with the real latents of ``blocks`` shifted (video up, audio down)."""
    other = x0.map(torch.clone)
    for k in blocks:
        video, audio = layout.block_slices(k)
        other.video[:, video] += amount
        other.audio[:, audio] -= amount
    return other


def test_flow_matching_trains_on_the_real_block_after_the_history():
    network = make_network()
    x0 = clip_latents()
    layout = clip_layout(network, x0)
    objective = MutualForcing(min_history_blocks=1, max_history_blocks=1, teacher_steps=1)
    base = run(objective, network, x0).losses["loss_fm"]
    assert not torch.allclose(base, run(objective, network, x0.map(torch.zeros_like)).losses["loss_fm"])
    # the trained block 1 enters the loss; a later block does not; the history follows the real block 0
    assert not torch.equal(run(objective, network, shifted(x0, layout, (1,), 1.0)).losses["loss_fm"], base)
    assert torch.equal(run(objective, network, shifted(x0, layout, (2,))).losses["loss_fm"], base)
    assert not torch.equal(run(objective, network, shifted(x0, layout, (0,))).losses["loss_fm"], base)
    # ablation: a history from fresh noise ignores the real clip, so only the trained block matters
    ablation = MutualForcing(min_history_blocks=1, max_history_blocks=1, teacher_steps=1, history=HistoryFromNoise())
    ablation_base = run(ablation, network, x0).losses["loss_fm"]
    assert torch.equal(run(ablation, network, shifted(x0, layout, (0, 2))).losses["loss_fm"], ablation_base)


def test_history_is_written_from_the_real_clip():
    network = make_network()
    x0 = clip_latents()
    layout = clip_layout(network, x0)
    objective = MutualForcing(min_history_blocks=2, teacher_steps=1)
    base = run(objective, network, x0).history
    assert len(base) == 2

    def same(a: AVLatents, b: AVLatents) -> bool:
        return torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)

    # the model's own few-step output, not the real clip itself
    assert not any(same(h, block_latents(x0, layout, k)) for k, h in enumerate(base))
    # changing real block 1 changes history block 1 only; changing block 0 changes both (block 1 reads it)
    one = run(objective, network, shifted(x0, layout, (1,))).history
    assert same(one[0], base[0]) and not same(one[1], base[1])
    zero = run(objective, network, shifted(x0, layout, (0,))).history
    assert not same(zero[0], base[0]) and not same(zero[1], base[1])
    # the trained block (2) does not leak into its own history
    assert all(same(a, b) for a, b in zip(run(objective, network, shifted(x0, layout, (2,))).history, base))
    # a start time of 1 is pure noise: the same history as the ablation (same draws of the per-rank generator)
    from_noise = run(MutualForcing(min_history_blocks=2, teacher_steps=1, history=HistoryFromNoise()), network, x0)
    at_one = run(MutualForcing(min_history_blocks=2, teacher_steps=1, history=HistoryFromRealClip([1.0])), network,
                 x0)
    assert all(same(a, b) for a, b in zip(at_one.history, from_noise.history))
    assert not any(same(a, b) for a, b in zip(base, from_noise.history))


def test_history_start_times_come_from_the_grid_and_the_shared_generator():
    times = BlockTimes.of((1.0, 0.75, 0.5, 0.25))
    source = HistoryFromRealClip()
    draws = [source.draw_start_time(times, torch.Generator().manual_seed(s)) for s in range(30)]
    assert set(draws) == {1.0, 0.75}  # the default: the grid's first two times
    assert draws == [source.draw_start_time(times, torch.Generator().manual_seed(s)) for s in range(30)]
    assert {HistoryFromRealClip([0.6]).draw_start_time(times, None)} == {0.6}
    with pytest.raises(ValueError, match="start_times"):
        HistoryFromRealClip([0.0])
    with pytest.raises(ValueError, match="one-step grid starts only from noise"):
        source.draw_start_time(BlockTimes.of((1.0,)), None)
    assert {HistoryFromRealClip([1.0]).draw_start_time(BlockTimes.of((1.0,)), None)} == {1.0}


def test_teacher_forced_history_is_the_real_clip():
    network = make_network()
    x0 = clip_latents()
    step = run(MutualForcing(min_history_blocks=2, teacher_forcing_probability=1.0), network, x0)
    assert step.teacher_forced
    layout = clip_layout(network, x0)
    for k, block in enumerate(step.history):
        assert torch.equal(block.video, block_latents(x0, layout, k).video)
    rolled = run(MutualForcing(min_history_blocks=2), network, x0)
    assert not rolled.teacher_forced and not torch.equal(rolled.history[1].video, step.history[1].video)


def test_trajectory_target_is_the_multi_step_endpoint():
    # one teacher Euler step from t to 0 is x_t - t v_multi, so the target equals the few-step x0 exactly while
    # the two modes coincide (zero step embedding), and differs once the step embedding is non-zero
    objective = MutualForcing(teacher_steps=1, distill_times=[0.5], condition_dropout=0.0)
    same = run(objective, make_network(zero_step_embedding=True), clip_latents())
    assert float(same.losses["loss_distill"].detach()) == 0.0 and same.distill_time == 0.5
    assert float(run(objective, make_network(), clip_latents()).losses["loss_distill"].detach()) > 0.0
    longer = run(MutualForcing(teacher_steps=4, distill_times=[0.5]), make_network(zero_step_embedding=True),
                 clip_latents())
    assert float(longer.losses["loss_distill"].detach()) > 0.0  # a 4-step ODE endpoint is not one Euler step


def test_guided_targets_and_rollout_inputs_run():
    modes = DualModes(video_cfg=3.0, audio_cfg=2.0)
    for distill_input in ("noised_real", "rollout"):
        step = run(MutualForcing(distill_input=distill_input, distill_times=[0.5], teacher_steps=2),
                   make_network(), clip_latents(), modes)
        assert torch.isfinite(step.losses["loss"]) and float(step.losses["loss_distill"].detach()) > 0


def test_dmd_distillation_trains_generator_and_critic_separately():
    network = make_network()
    critic = copy.deepcopy(network)
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    step = run(MutualForcing(distillation="dmd"), network, clip_latents(), critic=critic)
    assert {"loss_distill", "loss_critic", "loss_fm"} <= set(step.losses)
    step.losses["loss_distill"].backward(retain_graph=True)
    assert all(p.grad is None for p in critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())
    network.zero_grad()
    step.losses["loss_critic"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in network.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())
    with pytest.raises(ValueError, match="needs a critic"):
        run(MutualForcing(distillation="dmd"), network, clip_latents())


def test_dmd_generator_loss_gradient_is_the_normalised_direction():
    x_hat = torch.randn(2, 3, 4, requires_grad=True)
    real, fake = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    dmd_generator_loss(x_hat, real, fake).backward()
    normaliser = (x_hat.detach() - real).abs().mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(x_hat.grad, (fake - real) / normaliser / x_hat.numel(), atol=1e-7)


@pytest.mark.parametrize("video,audio", [(True, True), (True, False), (False, True)])
def test_stream_blocks_generate_every_block_in_both_modes(video, audio):
    network = make_network()
    modes = DualModes(video_cfg=2.0, window_seconds=1)
    for mode in ("few_step", "multi_step"):
        blocks = list(stream_blocks(network, CAPTIONS, 3, modes, video=video, audio=audio, mode=mode,
                                    generator=torch.Generator().manual_seed(0), multi_steps=3))
        assert len(blocks) == 3
        if video:
            assert [b.video.shape[1] for b in blocks] == [1, 3, 3] and torch.isfinite(blocks[2].video).all()
        if audio:
            assert [b.audio.shape[1] for b in blocks] == [1, 25, 25]
        assert (blocks[0].video is None) != video


def test_few_step_streams_are_reproducible_and_use_the_few_step_mode():
    network = make_network()

    def first_block(modes: DualModes) -> torch.Tensor:
        return next(stream_blocks(network, CAPTIONS, 1, modes, generator=torch.Generator().manual_seed(3))).video

    assert torch.equal(first_block(DualModes()), first_block(DualModes()))
    assert not torch.equal(first_block(DualModes()), first_block(DualModes(few_step_size=0.5)))


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="decreasing"):
        DualModes(few_step_times=(0.5, 1.0))
    with pytest.raises(ValueError, match="different step sizes"):
        DualModes(few_step_size=0.0)
    with pytest.raises(ValueError, match="distillation"):
        MutualForcing(distillation="consistency")
    with pytest.raises(ValueError, match="distill_times"):
        MutualForcing(distill_times=[0.0])


def test_sampler_settings_round_trip_through_exported_method_args():
    args = {"few_step_times": [1.0, 0.5], "step_size": 0.5, "multi_step_size": 0.0, "sample_steps": 12,
            "sample_shift": 2.0, "video_cfg": 3.0, "audio_cfg": 1.0, "context_time": 0.1, "window_seconds": 4,
            "audio_window_seconds": None}
    modes = dual_modes_from_config({"method_args": args})
    assert modes == DualModes((1.0, 0.5), 0.5, 0.0, 12, 2.0, 3.0, 1.0, 0.1, 4, None) and modes.guided
    with pytest.raises(ValueError, match="no Mutual Forcing sampler settings"):
        dual_modes_from_config({"method": "omniforcing.training.TeacherLitModule", "method_args": {}})
