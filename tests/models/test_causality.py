"""Block-causality of the asymmetric layout through every attention path (perturbation and gradients)."""

from __future__ import annotations

import pytest
import torch

LAYOUTS = [("v1", 0), ("v1", 4), ("v2", 0), ("v2", 3)]


def _split(layout, k, video, audio):
    """Latents of blocks <= k and of blocks > k."""
    vs, as_ = layout.block_slices(k)
    return (video[:, : vs.stop], audio[:, : as_.stop]), (video[:, vs.stop:], audio[:, as_.stop:])


@pytest.mark.parametrize("prefix,sinks", LAYOUTS)
def test_future_blocks_do_not_change_past_outputs(make_model, make_inputs, prefix, sinks):
    model = make_model(prefix=prefix, num_audio_sinks=sinks, causal=True)
    x = make_inputs(model, seconds=3)
    k = 1
    vs, as_ = x.layout.block_slices(k)
    base_v, base_a = model(x.video, x.audio, x.t_video, x.t_audio, x.text)
    for what in ("video", "audio", "both"):  # audio only: A2V path; video only: V2A path; plus self paths
        video, audio = x.video.clone(), x.audio.clone()
        t_video, t_audio = x.t_video.clone(), x.t_audio.clone()
        if what != "audio":
            video[:, vs.stop:] += torch.randn_like(video[:, vs.stop:])
            t_video[:, vs.stop:] = torch.rand_like(t_video[:, vs.stop:])
        if what != "video":
            audio[:, as_.stop:] += torch.randn_like(audio[:, as_.stop:])
            t_audio[:, as_.stop:] = torch.rand_like(t_audio[:, as_.stop:])
        out_v, out_a = model(video, audio, t_video, t_audio, x.text)
        torch.testing.assert_close(out_v[:, : vs.stop], base_v[:, : vs.stop], atol=1e-6, rtol=0)
        torch.testing.assert_close(out_a[:, : as_.stop], base_a[:, : as_.stop], atol=1e-6, rtol=0)
        # the perturbation does reach later blocks, of both modalities (cross-modal paths are active)
        assert (out_v[:, vs.stop:] - base_v[:, vs.stop:]).abs().max() > 1e-3, what
        assert (out_a[:, as_.stop:] - base_a[:, as_.stop:]).abs().max() > 1e-3, what


@pytest.mark.parametrize("prefix,sinks", LAYOUTS)
def test_cross_modal_paths_carry_information_within_and_into_later_blocks(make_model, make_inputs, prefix, sinks):
    model = make_model(prefix=prefix, num_audio_sinks=sinks, causal=True)
    x = make_inputs(model, seconds=2)
    vs, as_ = x.layout.block_slices(1)
    base_v, base_a = model(x.video, x.audio, x.t_video, x.t_audio, x.text)
    audio = x.audio.clone()
    audio[:, as_] += 1.0  # audio of block 1 -> video of blocks 1.. (A2V), never video of block 0
    out_v, _ = model(x.video, audio, x.t_video, x.t_audio, x.text)
    assert (out_v[:, vs] - base_v[:, vs]).abs().max() > 1e-3
    torch.testing.assert_close(out_v[:, : vs.start], base_v[:, : vs.start], atol=1e-6, rtol=0)
    video = x.video.clone()
    video[:, vs] += 1.0  # video of block 1 -> audio of blocks 1.. (V2A)
    _, out_a = model(video, x.audio, x.t_video, x.t_audio, x.text)
    assert (out_a[:, as_] - base_a[:, as_]).abs().max() > 1e-3
    torch.testing.assert_close(out_a[:, : as_.start], base_a[:, : as_.start], atol=1e-6, rtol=0)


@pytest.mark.parametrize("prefix,sinks", LAYOUTS)
def test_gradients_of_past_outputs_never_reach_future_inputs(make_model, make_inputs, prefix, sinks):
    model = make_model(prefix=prefix, num_audio_sinks=sinks, causal=True)
    x = make_inputs(model, seconds=3)
    video, audio = x.video.requires_grad_(), x.audio.requires_grad_()
    for k in range(x.layout.num_blocks - 1):
        vs, as_ = x.layout.block_slices(k)
        out_v, out_a = model(video, audio, x.t_video, x.t_audio, x.text)
        grad_v, grad_a = torch.autograd.grad(out_v[:, : vs.stop].square().sum() + out_a[:, : as_.stop].square().sum(),
                                             (video, audio))
        assert torch.count_nonzero(grad_v[:, vs.stop:]) == 0 and torch.count_nonzero(grad_a[:, as_.stop:]) == 0
        assert grad_v[:, vs].abs().sum() > 0 and grad_a[:, as_].abs().sum() > 0


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_uni_modal_streams_are_causal(make_model, make_inputs, modality):
    model = make_model(num_audio_sinks=2, causal=True)
    x = make_inputs(model, seconds=2)
    vs, as_ = x.layout.block_slices(1)
    if modality == "video":
        base, _ = model(x.video, None, x.t_video, None, x.text)
        video = x.video.clone()
        video[:, vs.stop:] += 1.0
        out, _ = model(video, None, x.t_video, None, x.text)
        cut = vs.stop
    else:
        _, base = model(None, x.audio, None, x.t_audio, x.text)
        audio = x.audio.clone()
        audio[:, as_.stop:] += 1.0
        _, out = model(None, audio, None, x.t_audio, x.text)
        cut = as_.stop
    torch.testing.assert_close(out[:, :cut], base[:, :cut], atol=1e-6, rtol=0)
    assert (out[:, cut:] - base[:, cut:]).abs().max() > 1e-3
