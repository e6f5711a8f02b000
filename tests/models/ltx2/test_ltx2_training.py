"""LTX-2 adapter in training: activation checkpointing (per block, and of whole cached forwards) gives the same
gradients; the step-size embedding starts at zero; compiled blocks give the same outputs."""

from __future__ import annotations

import pytest
import torch

from omniforcing.models.parallelize import checkpoint_cached_forward


def _rollout_grads(model, clip, checkpoint_calls: bool):
    """A Self-Forcing-like rollout with a 2-s window: per block a no-grad step, an exit forward with grad, a
    clean no-grad commit. Returns the parameter gradients of the total loss."""
    gen = torch.Generator().manual_seed(3)
    cache = model.new_cache(2, window_seconds=2)
    loss = 0.0
    for k in range(clip.layout.num_blocks):
        video, audio, t_video, t_audio = clip.block(k)
        noise_v, noise_a = torch.randn(video.shape, generator=gen), torch.randn(audio.shape, generator=gen)
        with torch.no_grad():
            model(noise_v, noise_a, t_video, t_audio, clip.text, cache=cache, block=k)
        args = (noise_v * 0.5 + video * 0.5, noise_a * 0.5 + audio * 0.5, t_video * 0.5, t_audio * 0.5, clip.text)
        if checkpoint_calls:
            out_v, out_a = checkpoint_cached_forward(model, *args, cache=cache, block=k)
        else:
            out_v, out_a = model(*args, cache=cache, block=k)
        loss = loss + out_v.square().mean() + out_a.square().mean()
        with torch.no_grad():
            model(out_v, out_a, torch.zeros_like(t_video), torch.zeros_like(t_audio), clip.text, cache=cache,
                  block=k, commit=True)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def _assert_same_grads(got, want):
    assert sum(w is not None for w in want) > 10
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("per_block,whole_call,policy", [(True, False, "absolute"), (False, True, "absolute"),
                                                         (True, False, "relative")])
def test_checkpointing_gives_the_same_gradients(make_backbone, make_clip, per_block, whole_call, policy):
    """Window 2 over 4 blocks: the "relative" policy rotates the pinned keys at the last block."""
    reference_model = make_backbone(num_audio_sinks=2, prefix_position=policy)
    clip = make_clip(reference_model, seconds=3)
    reference = _rollout_grads(reference_model, clip, checkpoint_calls=False)
    model = make_backbone(num_audio_sinks=2, activation_checkpointing=per_block, prefix_position=policy)
    _assert_same_grads(_rollout_grads(model, clip, checkpoint_calls=whole_call), reference)


def test_full_sequence_training_forward_with_block_checkpointing(make_backbone, make_clip):
    grads = []
    for checkpointed in (False, True):
        model = make_backbone(num_audio_sinks=2, causal=True, activation_checkpointing=checkpointed)
        clip = make_clip(model, seconds=2)
        out_v, out_a = model(clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text, window_seconds=1)
        loss = out_v.square().mean() + out_a.square().mean()
        grads.append(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True))
    _assert_same_grads(*grads)


def test_step_size_embedding_starts_at_zero_and_trains(make_backbone, make_clip):
    plain = make_backbone()
    model = make_backbone(step_size_conditioning=True)
    clip = make_clip(model, seconds=1)
    args = (clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)
    with torch.no_grad():
        want = plain(*args)
        got = model(*args, step_size=torch.tensor([0.25, 1.0]))
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    with pytest.raises(ValueError, match="step_size"):
        model(*args)
    out_v, out_a = model(*args, step_size=torch.tensor([0.25, 1.0]))
    grad = torch.autograd.grad(out_v.square().mean() + out_a.square().mean(), model.video_step.mlp[-1].weight)[0]
    assert grad.abs().max() > 0


@torch.no_grad()
def test_compiled_blocks_give_the_same_outputs(make_backbone, make_clip):
    model = make_backbone(num_audio_sinks=2, causal=True)
    clip = make_clip(model, seconds=2)
    want = model(clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)
    model.compile_core(backend="eager")
    assert model.compiled
    got = model(clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)
    model.compile_core(enabled=False)
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= 1e-6


@pytest.mark.filterwarnings("ignore:FSDP is switching to use `NO_SHARD`")
@pytest.mark.parametrize("wrapping", ["fully_shard", "FullyShardedDataParallel"])
def test_fsdp_units_per_block_stream_and_train(make_backbone, make_clip, tmp_path, wrapping):
    """One FSDP unit per block (single-process gloo on the CPU; FSDP2's fully_shard, or FSDP1's wrapper as
    Lightning's FSDPStrategy makes it): a cached stream projects the prompt with each block's full weights
    (outside the block's forward) and equals the unsharded stream; a training forward with per-block activation
    checkpointing gives the unsharded loss (and, FSDP2, its gradients)."""
    import torch.distributed as dist
    from diffusers.models.transformers.transformer_ltx2 import LTX2VideoTransformerBlock
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    model = make_backbone(num_audio_sinks=2, causal=True, activation_checkpointing=True)
    clip = make_clip(model, seconds=1)
    args = (clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)
    reference = make_backbone(num_audio_sinks=2, causal=True)
    loss = reference(*args)[0].square().mean()
    loss.backward()
    want_grad = reference.transformer.transformer_blocks[0].attn1.to_q.weight.grad

    def stream(network):
        cache, outs = network.new_cache(2), []
        with torch.no_grad():
            for k in range(clip.layout.num_blocks):
                outs.extend(network(*clip.block(k), clip.text, cache=cache, block=k, commit=True))
        return outs

    want = stream(model)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        if wrapping == "fully_shard":
            for block in model.transformer.transformer_blocks:
                fully_shard(block)
            network = fully_shard(model)
        else:  # world size 1: FSDP1 falls back to NO_SHARD, so this checks the wrapper's plumbing
            network = FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({LTX2VideoTransformerBlock}),
                                               device_id=torch.device("cpu"))
        for got, w in zip(stream(network), want):
            assert torch.equal(got, w)
        sharded_loss = network(*args)[0].square().mean()
        sharded_loss.backward()  # through the per-block activation checkpointing
        assert torch.allclose(sharded_loss, loss)
        if wrapping == "fully_shard":
            grad = model.transformer.transformer_blocks[0].attn1.to_q.weight.grad.full_tensor()
            torch.testing.assert_close(grad, want_grad, atol=1e-6, rtol=1e-5)
        else:
            assert any(p.grad is not None for p in network.parameters())
    finally:
        dist.destroy_process_group()


def test_every_parameter_has_its_gradient_norm_group(make_backbone):
    """The a2v/v2a attention and its modulation are ``cross``, the prompt path ``text``; every group is used."""
    model = make_backbone(num_audio_sinks=2, step_size_conditioning=True)
    groups = {name: model.parameter_group(name) for name, _ in model.named_parameters()}
    block = "transformer.transformer_blocks.0."
    assert groups[block + "audio_to_video_attn.to_q.weight"] == groups[block + "video_to_audio_attn.to_k.weight"] \
        == groups["transformer.av_cross_attn_video_a2v_gate.linear.weight"] == "cross"
    assert groups[block + "attn2.to_q.weight"] == groups[block + "audio_attn2.to_v.weight"] == "text"
    assert groups["transformer.caption_projection.linear_1.weight"] == "text"
    assert groups[block + "attn1.to_q.weight"] == groups[block + "ff.net.0.proj.weight"] == "video"
    assert groups[block + "audio_attn1.to_q.weight"] == groups["audio_step.mlp.0.weight"] == "audio"
    assert groups["audio_sinks"] == "sinks"
    assert set(groups.values()) == {"cross", "sinks", "text", "video", "audio"}
