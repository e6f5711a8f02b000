"""Self-Forcing rollout: gradient only through each block's exit forward, detached cache, exact recompute."""

from __future__ import annotations

import pytest
import torch

from omniforcing.methods.self_forcing import SelfForcing, blocks_for_seconds, rollout
from omniforcing.sampling.schedule import check_times
from omniforcing.models.transformer import DualStreamTransformer

from test_dmd import TINY

TIMES = [1.0, 0.75, 0.5, 0.25]


def causal_student(**overrides) -> DualStreamTransformer:
    torch.manual_seed(0)
    model = DualStreamTransformer(**{**TINY, "causal": True, "num_audio_sinks": 2, **overrides})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


class ForwardLog:
    """Wraps ``model.forward``: records per call its block, grad mode and whether inputs/outputs carry grad."""

    def __init__(self, model: DualStreamTransformer) -> None:
        self.calls: list[dict] = []
        self.caches: list = []
        original_forward, original_new_cache = model.forward, model.new_cache

        def forward(video, audio, *args, **kwargs):
            # recorded before running: a checkpoint recompute stops early (by an exception) once it has
            # rebuilt what backward needs
            call = dict(block=kwargs.get("block"), commit=kwargs.get("commit", False), grad=False,
                        input_grad=video.requires_grad or audio.requires_grad)
            self.calls.append(call)
            out = original_forward(video, audio, *args, **kwargs)
            call["grad"] = torch.is_grad_enabled() and out[0].requires_grad
            return out

        def new_cache(*args, **kwargs):
            self.caches.append(original_new_cache(*args, **kwargs))
            return self.caches[-1]

        model.forward, model.new_cache = forward, new_cache


def training_rollout(model, exit_step: int, checkpoint_exit: bool = True, seconds: int = 2, seed: int = 0):
    text = model.encode_text(["a red circle bounces", "a blue square thuds"])
    return rollout(model, text, blocks_for_seconds(model, seconds), TIMES, video_latent=(4, 2, 2),
                   audio_latent=(3,), exit_step=exit_step, checkpoint_exit=checkpoint_exit,
                   generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("exit_step", [0, 2, 3])
def test_gradient_reaches_parameters_only_through_each_blocks_exit_forward(exit_step):
    model = causal_student()
    log = ForwardLog(model)
    out = training_rollout(model, exit_step)
    blocks = blocks_for_seconds(model, 2)
    assert out.video.shape == (2, 7, 4, 2, 2) and out.audio.shape == (2, 51, 3)
    assert len(log.calls) == blocks * (exit_step + 1) + blocks  # denoising steps up to the exit + commits
    with_grad = [c for c in log.calls if c["grad"]]
    assert [c["block"] for c in with_grad] == list(range(blocks))  # exactly one forward per block
    assert not any(c["input_grad"] for c in with_grad)  # the exit step's input came from no_grad steps
    assert not any(c["grad"] for c in log.calls if c["commit"])  # clean-context refresh is no_grad
    before = len(log.calls)
    (out.video.square().mean() + out.audio.square().mean()).backward()
    assert len(log.calls) - before == blocks  # backward recomputes only the checkpointed exit forwards
    assert model.video.proj_out.weight.grad.abs().sum() > 0 and model.audio.sinks.grad.abs().sum() > 0


def test_cache_entries_are_detached():
    model = causal_student()
    log = ForwardLog(model)
    training_rollout(model, exit_step=1)
    (cache,) = log.caches
    assert cache.next_block == blocks_for_seconds(model, 2)
    tensors = []
    for layer in cache.snapshot().layers:
        for kv in (layer.video_self, layer.audio_self, layer.audio_to_video, layer.video_to_audio):
            tensors += [kv.key, kv.value]
    assert tensors and all(not t.requires_grad and t.grad_fn is None for t in tensors)


def test_checkpointed_recompute_equals_the_original_forward():
    grads, outputs = [], []
    for checkpoint_exit in (False, True):
        model = causal_student()
        out = training_rollout(model, exit_step=2, checkpoint_exit=checkpoint_exit, seed=3)
        (out.video.square().mean() + out.audio.square().mean()).backward()
        outputs.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outputs[1].video, outputs[0].video)
    torch.testing.assert_close(outputs[1].audio, outputs[0].audio)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_generation_runs_every_step_without_gradient():
    model = causal_student(num_audio_sinks=0, prefix="v2")
    log = ForwardLog(model)
    with torch.no_grad():
        out = training_rollout(model, exit_step=None, seconds=2)
    assert blocks_for_seconds(model, 2) == 2 and len(log.calls) == 2 * (len(TIMES) + 1)
    assert out.video.shape == (2, 7, 4, 2, 2) and not out.video.requires_grad


def test_settings_are_checked():
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_times([1.0, 1.0])
    with pytest.raises(ValueError, match="context_time"):
        SelfForcing(context_time=1.0)
    model = causal_student()
    assert SelfForcing(rollout_blocks=2).num_blocks(model, 5) == 2 and SelfForcing().num_blocks(model, 1) == 2
