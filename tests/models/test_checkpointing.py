"""Activation checkpointing of cached forwards: the recompute sees the cache as the forward did."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from omniforcing.models.parallelize import apply_activation_checkpointing, checkpoint_cached_forward


def _rollout_grads(model, x, mode: str, commit_exit: bool):
    """A Self-Forcing-like rollout with a 2-s window: per block one no-grad step, one exit forward with grad,
    then (unless the exit commits) a clean no-grad commit. Returns the parameter gradients of the total loss."""
    gen = torch.Generator().manual_seed(3)
    cache = model.new_cache(2, window_seconds=2)
    loss = 0.0
    for k in range(x.layout.num_blocks):
        video, audio, t_video, t_audio = x.block(k)
        noise_v, noise_a = torch.randn(video.shape, generator=gen), torch.randn(audio.shape, generator=gen)
        with torch.no_grad():
            model(noise_v, noise_a, t_video, t_audio, x.text, cache=cache, block=k)
        args = (noise_v * 0.5 + video * 0.5, noise_a * 0.5 + audio * 0.5, t_video * 0.5, t_audio * 0.5, x.text)
        if mode == "snapshot":
            out_v, out_a = checkpoint_cached_forward(model, *args, cache=cache, block=k, commit=commit_exit)
        else:
            out_v, out_a = model(*args, cache=cache, block=k, commit=commit_exit)
        loss = loss + out_v.square().mean() + out_a.square().mean()
        if not commit_exit:
            with torch.no_grad():
                model(out_v, out_a, torch.zeros_like(t_video), torch.zeros_like(t_audio), x.text, cache=cache,
                      block=k, commit=True)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("commit_exit", [False, True])
def test_checkpointed_cached_forward_gives_the_same_gradients(make_model, make_inputs, commit_exit):
    model = make_model(num_audio_sinks=2)
    x = make_inputs(model, seconds=3)
    reference = _rollout_grads(model, x, "plain", commit_exit)
    for got, want in zip(_rollout_grads(model, x, "snapshot", commit_exit), reference):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_layer_checkpointing_with_a_cache_gives_the_same_gradients(make_model, make_inputs):
    model = make_model(num_audio_sinks=2)
    x = make_inputs(model, seconds=3)
    reference = _rollout_grads(model, x, "plain", commit_exit=False)
    apply_activation_checkpointing(model)
    assert all(layer.activation_checkpointing for layer in model.layers)
    for got, want in zip(_rollout_grads(model, x, "plain", commit_exit=False), reference):
        if want is not None:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_checkpoint_without_snapshot_cannot_silently_recompute_against_a_later_cache(make_model, make_inputs):
    """The pitfall of ALGORITHMS.md §5.3: a naive checkpoint recomputes against the cache as it is at backward
    time. The cache refuses (the history no longer ends where the call starts) instead of giving wrong grads."""
    model = make_model()
    x = make_inputs(model, seconds=2)
    cache = model.new_cache(2, window_seconds=2)
    with torch.no_grad():
        model(*x.block(0), x.text, cache=cache, block=0, commit=True)
    out_v, _ = checkpoint(lambda *a: model(*a, cache=cache, block=1), *x.block(1), x.text, use_reentrant=False)
    with torch.no_grad():
        model(*x.block(1), x.text, cache=cache, block=1, commit=True)
    with pytest.raises(ValueError, match="must start at block 2"):
        out_v.sum().backward()
