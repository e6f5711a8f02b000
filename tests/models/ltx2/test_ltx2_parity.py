"""Bidirectional, cache-free, sink-free forward of the adapter == diffusers' LTX2VideoTransformer3DModel.forward."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel

from omniforcing.models.protocol import AVBackbone


def diffusers_forward(model, clip, **kwargs):
    """The wrapped model's own forward, on a copy with diffusers' default attention processors."""
    reference = LTX2VideoTransformer3DModel.from_config(model.transformer.config)
    reference.load_state_dict(model.transformer.state_dict())
    video, audio = clip.video, clip.audio
    batch, frames, channels, h, w = video.shape
    tokens = video.permute(0, 1, 3, 4, 2).reshape(batch, frames * h * w, channels)
    timestep = 1000 * clip.t_video.repeat_interleave(h * w, dim=1)
    text = clip.text
    out_v, out_a = reference(hidden_states=tokens, audio_hidden_states=audio,
                             encoder_hidden_states=text.video.tokens, audio_encoder_hidden_states=text.audio.tokens,
                             timestep=timestep, audio_timestep=1000 * clip.t_audio,
                             encoder_attention_mask=text.video.mask.float(),
                             audio_encoder_attention_mask=text.audio.mask.float(), num_frames=frames, height=h,
                             width=w, fps=24.0, audio_num_frames=audio.shape[1], return_dict=False, **kwargs)
    return out_v.reshape(batch, frames, h, w, channels).permute(0, 1, 4, 2, 3), out_a


@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
@torch.no_grad()
def test_bidirectional_forward_equals_diffusers_forward(make_backbone, make_clip, rope_type):
    from omniforcing.models.ltx2 import LTX2Architecture
    model = make_backbone(architecture=LTX2Architecture(rope_type=rope_type))
    clip = make_clip(model, seconds=2)
    want_v, want_a = diffusers_forward(model, clip)
    got_v, got_a = model(clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)
    assert got_v.shape == clip.video.shape and got_a.shape == clip.audio.shape
    assert (got_v - want_v).abs().max() <= 1e-5
    assert (got_a - want_a).abs().max() <= 1e-5
    assert want_v.abs().mean() > 1e-2 and want_a.abs().mean() > 1e-2  # non-trivial outputs


@torch.no_grad()
def test_single_modality_forwards_equal_diffusers_isolated_modalities(make_backbone, make_clip):
    """A video-only (audio-only) call equals diffusers' forward with ``isolate_modalities`` (no audio<->video
    attention): the placeholder of the absent stream changes nothing."""
    model = make_backbone()
    clip = make_clip(model, seconds=1)
    want_v, want_a = diffusers_forward(model, clip, isolate_modalities=True)
    got_v, none = model(clip.video, None, clip.t_video, None, clip.text)
    none_v, got_a = model(None, clip.audio, None, clip.t_audio, clip.text)
    assert none is None and none_v is None
    assert (got_v - want_v).abs().max() <= 1e-5 and (got_a - want_a).abs().max() <= 1e-5
    joint_v, _ = model(clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)
    assert (joint_v - got_v).abs().max() > 1e-4  # the joint call does use the other stream


def test_backbone_satisfies_the_protocol(make_backbone):
    model = make_backbone(num_audio_sinks=2, step_size_conditioning=True)
    assert isinstance(model, AVBackbone)
    assert (model.video_channels, model.audio_channels, model.video_grid) == (8, 8, (2, 3))
    assert model.depth == 2 and model.step_size_conditioning and model.dtype == torch.float32
    layout = model.layout(7)
    assert (layout.num_audio, layout.video_rate, layout.audio_rate) == (51, 3, 25)
    for name in ("layout", "encode_text", "new_cache", "forward", "compile_core"):  # the protocol's parameters
        wanted = [(p.name, p.kind) for p in inspect.signature(getattr(AVBackbone, name)).parameters.values()]
        got = [(p.name, p.kind) for p in inspect.signature(getattr(type(model), name)).parameters.values()]
        assert got[:len(wanted)] == wanted, name


@torch.no_grad()
def test_deep_copy_and_state_dict_round_trip(make_backbone, make_clip):
    """EMA copies and checkpoints: a deep copy runs its own weights through its own processors."""
    model = make_backbone(num_audio_sinks=2, causal=True)
    clip = make_clip(model, seconds=1)
    args = (clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)
    want = model(*args)
    twin = copy.deepcopy(model)
    for got, w in zip(twin(*args), want):
        assert torch.equal(got, w)
    with torch.no_grad():
        twin.transformer.proj_out.weight.add_(1.0)
        twin.audio_sinks.add_(1.0)
    assert not torch.equal(twin(*args)[0], want[0]) and torch.equal(model(*args)[0], want[0])
    twin.load_state_dict(model.state_dict())
    assert all(torch.equal(g, w) for g, w in zip(twin(*args), want))
    assert {"audio_sinks", "transformer.proj_in.weight"} <= set(model.state_dict())
