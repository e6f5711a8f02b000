"""Coupling two uni-modal checkpoints; loading weights; presets."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from omniforcing.models.presets import PRESETS, build_preset, parameter_counts
from omniforcing.models.weights import couple_unimodal, load_weights, stream_of, zero_cross_gates_


def _unimodal(make_model, seed):
    """A model whose cross-modal gates are exactly zero, as after video-only or audio-only training."""
    model = make_model(seed=seed, num_audio_sinks=2, causal=True)
    state = model.state_dict()
    zero_cross_gates_(state)
    model.load_state_dict(state)
    return model


@torch.no_grad()
def test_coupled_model_reproduces_both_unimodal_models_exactly(make_model, make_inputs):
    video_model, audio_model = _unimodal(make_model, 0), _unimodal(make_model, 7)
    joint = make_model(seed=11, num_audio_sinks=2, causal=True)
    joint.load_state_dict(couple_unimodal(video_model.state_dict(), audio_model.state_dict()))
    x = make_inputs(joint, seconds=2)
    captions = ["a red ball bounces", "two cubes collide"]
    out_v, out_a = joint(x.video, x.audio, x.t_video, x.t_audio, joint.encode_text(captions))
    want_v, _ = video_model(x.video, None, x.t_video, None, video_model.encode_text(captions))
    _, want_a = audio_model(None, x.audio, None, x.t_audio, audio_model.encode_text(captions))
    torch.testing.assert_close(out_v, want_v, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_a, want_a, atol=1e-6, rtol=0)
    joint.layers[0].video.modulation.data[10] += 1.0  # once the A2V gate opens, video depends on audio
    assert (joint(x.video, x.audio, x.t_video, x.t_audio, joint.encode_text(captions))[0] - want_v).abs().max() > 1e-4


def test_coupling_checks_its_inputs(make_model):
    state = make_model().state_dict()
    other = make_model(depth=1).state_dict()
    with pytest.raises(ValueError, match="different parameters"):
        couple_unimodal(state, other)
    assert stream_of("layers.3.audio.cross_attn.to_k.weight") == "audio"
    assert stream_of("video.text.proj.weight") == "video" and stream_of("text_encoder.x") == "shared"
    with pytest.raises(ValueError, match="no stream"):
        stream_of("decoder.weight")


def test_load_weights_from_safetensors_and_lightning_checkpoints(make_model, tmp_path):
    state = {k: v.contiguous() for k, v in make_model().state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"network.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.ckpt")
    for loaded in (load_weights(tmp_path / "w.safetensors"), load_weights(tmp_path / "w.ckpt", prefix="network.")):
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="starts with"):
        load_weights(tmp_path / "w.ckpt", prefix="critic.")


def test_presets_build_and_grow():
    model = build_preset("tiny", num_audio_sinks=16, prefix="v1", causal=True)
    assert model.num_audio_sinks == 16
    totals = [parameter_counts(name)["total"] for name in ("tiny", "small", "base")]  # large: slow to build
    assert totals == sorted(totals) and 1e6 <= totals[1] <= 5e6
    assert totals[0] == sum(p.numel() for p in build_preset("tiny").parameters())
    assert set(PRESETS) == {"tiny", "small", "base", "large"}
