"""The dual-stream transformer: shapes, modes, sinks, step-size conditioning, dtypes, text conditioning."""

from __future__ import annotations

import logging

import pytest
import torch

from omniforcing.models.text import ByteTextEncoder


@torch.no_grad()
def test_joint_and_uni_modal_outputs_have_input_shapes(make_model, make_inputs):
    model = make_model(num_audio_sinks=4)
    x = make_inputs(model, seconds=2)
    out_v, out_a = model(x.video, x.audio, x.t_video, x.t_audio, x.text)
    assert out_v.shape == x.video.shape and out_a.shape == x.audio.shape  # sinks are not in the output
    only_v, none_a = model(x.video, None, x.t_video, None, x.text)
    none_v, only_a = model(None, x.audio, None, x.t_audio, x.text)
    assert only_v.shape == x.video.shape and only_a.shape == x.audio.shape and none_a is None and none_v is None
    assert (only_v - out_v).abs().max() > 1e-3  # joint attention changes the video prediction


@pytest.mark.parametrize("prefix,num_video", [("v1", 1), ("v2", 4), ("v2", 2)])
@torch.no_grad()
def test_single_block_is_identical_under_full_and_block_causal_masks(make_model, prefix, num_video):
    model = make_model(prefix=prefix, num_audio_sinks=3)
    layout = model.layout(num_video)
    assert layout.num_blocks == 1
    video, audio = torch.randn(1, num_video, 4, 2, 2), torch.randn(1, layout.num_audio, 3)
    t_v, t_a, text = torch.rand(1, num_video), torch.rand(1, layout.num_audio), model.encode_text(["x"])
    full = model(video, audio, t_v, t_a, text, causal=False)
    causal = model(video, audio, t_v, t_a, text, causal=True)
    for a, b in zip(full, causal):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_sinks_get_gradients_and_change_outputs(make_model, make_inputs):
    model = make_model(num_audio_sinks=4, causal=True)
    x = make_inputs(model, seconds=2)
    out_v, out_a = model(x.video, x.audio, x.t_video, x.t_audio, x.text)
    (out_v.square().mean() + out_a.square().mean()).backward()
    assert model.audio.sinks.grad is not None and model.audio.sinks.grad.abs().sum() > 0
    with torch.no_grad():
        model.audio.sinks.add_(1.0)
        moved_v, _ = model(x.video, x.audio, x.t_video, x.t_audio, x.text)
    assert (moved_v - out_v).abs().max() > 1e-3  # every video query sees the sinks through A2V


@torch.no_grad()
def test_sinks_have_identity_rotation(make_model):
    model = make_model(num_audio_sinks=3)
    tokens = model.geometry.audio(0, 26, 3, torch.device("cpu"), torch.float32)
    assert tokens.blocks[:3].tolist() == [0, 0, 0]  # sinks are members of block 0
    for tables in (tokens.self_rope, tokens.cross_rope):  # audio self-attention and cross-modal attention
        assert torch.equal(tables.cos[:3], torch.ones_like(tables.cos[:3]))
        assert torch.equal(tables.sin[:3], torch.zeros_like(tables.sin[:3]))
        assert tables.sin[3:].abs().max() > 0.1


def test_step_size_conditioning_starts_as_a_no_op_and_learns(make_model, make_inputs):
    plain = make_model()
    model = make_model(perturb=False, step_size_conditioning=True)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(key.split(".")[1] == "step" for key in missing)  # one extra parameter set
    x = make_inputs(model, seconds=1)
    few = torch.full((2,), 0.25)
    many = torch.full((2,), 0.02)
    with torch.no_grad():
        base_v, _ = plain(x.video, x.audio, x.t_video, x.t_audio, x.text)
        few_v, _ = model(x.video, x.audio, x.t_video, x.t_audio, x.text, step_size=few)
        many_v, _ = model(x.video, x.audio, x.t_video, x.t_audio, x.text, step_size=many)
    torch.testing.assert_close(few_v, base_v)
    torch.testing.assert_close(many_v, base_v)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out_v, out_a = model(x.video, x.audio, x.t_video, x.t_audio, x.text, step_size=few)
    (out_v.square().mean() + out_a.square().mean()).backward()
    optimizer.step()
    with torch.no_grad():
        few_v, _ = model(x.video, x.audio, x.t_video, x.t_audio, x.text, step_size=few)
        many_v, _ = model(x.video, x.audio, x.t_video, x.t_audio, x.text, step_size=many)
    assert (few_v - many_v).abs().max() > 1e-4
    with pytest.raises(ValueError, match="step_size"):
        model(x.video, x.audio, x.t_video, x.t_audio, x.text)


@torch.no_grad()
def test_bfloat16_on_cpu_is_finite_and_close_to_float32(make_model, make_inputs):
    model = make_model(num_audio_sinks=2, causal=True)
    x = make_inputs(model, seconds=1)
    ref_v, ref_a = model(x.video, x.audio, x.t_video, x.t_audio, x.text)
    model = model.to(torch.bfloat16)
    text = model.encode_text(["a red ball bounces", "two cubes collide"])
    out_v, out_a = model(x.video.bfloat16(), x.audio.bfloat16(), x.t_video, x.t_audio, text)
    assert out_v.dtype == torch.bfloat16 and torch.isfinite(out_v).all() and torch.isfinite(out_a).all()
    for out, ref in ((out_v, ref_v), (out_a, ref_a)):
        assert (out.float() - ref).norm() / ref.norm() < 0.05


@torch.no_grad()
def test_dropped_captions_get_the_null_embedding(make_model):
    model = make_model()
    text = model.encode_text(["a dog barks", "rain on a roof"], drop=torch.tensor([True, False]))
    other = model.encode_text(["something else", "rain on a roof"], drop=torch.tensor([True, False]))
    for stream in (text.video, other.video, text.audio):
        assert stream.mask[0].sum() == 1
    torch.testing.assert_close(text.video.tokens[0], other.video.tokens[0])
    torch.testing.assert_close(text.audio.tokens[0, 0], model.audio.text.null[0])
    assert text.video.mask[1].sum() == len("rain on a roof") + 1
    with pytest.raises(ValueError, match="bool"):
        model.encode_text(["a"], drop=torch.tensor([1]))


def test_byte_encoder_needs_no_files_and_cuts_long_captions(caplog):
    encoder = ByteTextEncoder(width=16, depth=1, heads=2, max_length=8)
    ids, mask = encoder.tokenize(["", "héllo", "a much longer caption"])
    assert ids.shape == (3, 8) and mask.sum(1).tolist() == [1, 7, 8]
    assert ids[0, 0] == ByteTextEncoder.BEGIN
    with caplog.at_level(logging.WARNING):
        out = encoder(["a much longer caption"])
    assert out.tokens.shape == (1, 8, 16) and "cut" in caplog.text


@torch.no_grad()
def test_bad_inputs_get_clear_errors(make_model, make_inputs):
    model = make_model()
    x = make_inputs(model, seconds=1)
    with pytest.raises(ValueError, match="video must be"):
        model(x.video[:, :, :2], x.audio, x.t_video, x.t_audio, x.text)
    with pytest.raises(ValueError, match="t_audio must be"):
        model(x.video, x.audio, x.t_video, x.t_audio[:, :3], x.text)
    with pytest.raises(ValueError, match="pair"):
        model(x.video, x.audio[:, :20], x.t_video, x.t_audio[:, :20], x.text)
    with pytest.raises(ValueError, match="only meaningful with a cache"):
        model(x.video, x.audio, x.t_video, x.t_audio, x.text, commit=True)
    with pytest.raises(ValueError, match="causal=True"):
        model(x.video, x.audio, x.t_video, x.t_audio, x.text, causal=False, window_seconds=1)


def test_sampling_in_inference_mode_does_not_break_later_training(make_model, make_inputs):
    """Masks and RoPE tables are memoised; ones first built under inference_mode must still be usable (and
    saved for backward) by a training forward afterwards."""
    model = make_model(num_audio_sinks=2, causal=True)
    x = make_inputs(model, seconds=1)
    with torch.inference_mode():
        model(x.video, x.audio, x.t_video, x.t_audio, x.text)
        model(*x.block(0), x.text, cache=model.new_cache(2))
    out_v, out_a = model(x.video, x.audio, x.t_video, x.t_audio, x.text)
    (out_v.square().mean() + out_a.square().mean()).backward()
    assert model.layers[0].video.self_attn.to_q.weight.grad is not None
