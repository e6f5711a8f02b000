"""LTX-2 adapter with an AVKVCache: block-by-block decoding == the block-causal full forward; rolling windows."""

from __future__ import annotations

import pytest
import torch

LAYOUTS = [("v1", 0), ("v1", 3), ("v2", 2)]


def _inputs_of(clip, modality, vs, as_):
    video = clip.video[:, vs] if modality != "audio" else None
    audio = clip.audio[:, as_] if modality != "video" else None
    return (video, audio, None if video is None else clip.t_video[:, vs],
            None if audio is None else clip.t_audio[:, as_])


def _decode(model, clip, cache, modality="joint", chunks=None):
    """Decode chunk by chunk (``chunks`` = blocks per call): a non-committing call on noise first (a denoising
    step), then the committing call on the clip's latents."""
    chunks = chunks or [1] * clip.layout.num_blocks
    outs, block = ([], []), 0
    for size in chunks:
        first, last = clip.layout.block_slices(block), clip.layout.block_slices(block + size - 1)
        inputs = _inputs_of(clip, modality, slice(first[0].start, last[0].stop), slice(first[1].start, last[1].stop))
        noisy = [None if x is None else torch.randn_like(x) for x in inputs[:2]]
        model(*noisy, *inputs[2:], clip.text, cache=cache, block=block)
        for out, new in zip(outs, model(*inputs, clip.text, cache=cache, block=block, commit=True)):
            out.append(new)
        block += size
    return tuple(None if o[0] is None else torch.cat(o, 1) for o in outs)


def _full(model, clip, modality="joint", **kwargs):
    return model(*_inputs_of(clip, modality, slice(None), slice(None)), clip.text, causal=True, **kwargs)


def _assert_parity(got, want):
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert (g - w).abs().max() <= 1e-5


@pytest.mark.parametrize("modality", ["joint", "video", "audio"])
@pytest.mark.parametrize("prefix,sinks", LAYOUTS)
@torch.no_grad()
def test_block_by_block_decoding_equals_block_causal_full_forward(make_backbone, make_clip, prefix, sinks, modality):
    model = make_backbone(prefix=prefix, num_audio_sinks=sinks)
    clip = make_clip(model, seconds=3)
    want = _full(model, clip, modality)
    bidirectional = model(*_inputs_of(clip, modality, slice(None), slice(None)), clip.text, causal=False)
    assert any((w - b).abs().max() > 1e-3 for w, b in zip(want, bidirectional) if w is not None)  # masks matter
    _assert_parity(_decode(model, clip, model.new_cache(2), modality), want)


@torch.no_grad()
def test_multi_block_chunks_and_partial_tail(make_backbone, make_clip):
    model = make_backbone(num_audio_sinks=2)
    clip = make_clip(model, seconds=3, extra_video=2)
    cache = model.new_cache(2)
    _assert_parity(_decode(model, clip, cache, chunks=[2, 1, clip.layout.num_blocks - 3]), _full(model, clip))
    with pytest.raises(ValueError, match="partial block"):
        model(*clip.block(0), clip.text, cache=cache, block=cache.next_block)


@pytest.mark.parametrize("prefix,sinks", [("v1", 3), ("v2", 0)])
@torch.no_grad()
def test_rolling_window_equals_windowed_full_forward(make_backbone, make_clip, prefix, sinks):
    model = make_backbone(prefix=prefix, num_audio_sinks=sinks)
    clip = make_clip(model, seconds=5)
    want = _full(model, clip, window_seconds=2, audio_window_seconds=3)
    assert (want[0] - _full(model, clip)[0]).abs().max() > 1e-3  # the window matters
    cache = model.new_cache(2, window_seconds=2, audio_window_seconds=3)
    outs, sizes = ([], []), []
    for k in range(clip.layout.num_blocks):
        for out, new in zip(outs, model(*clip.block(k), clip.text, cache=cache, block=k, commit=True)):
            out.append(new)
        sizes.append(cache.num_tokens())
    _assert_parity([torch.cat(o, 1) for o in outs], want)
    assert sizes[-1] == sizes[-2] and sizes[0] < sizes[-1]  # constant once the window is full


@torch.no_grad()
def test_chunked_decoding_inside_a_window(make_backbone, make_clip):
    model = make_backbone(num_audio_sinks=2)
    clip = make_clip(model, seconds=4)
    _assert_parity(_decode(model, clip, model.new_cache(2, window_seconds=2), chunks=[3, 1, 1]),
                   _full(model, clip, window_seconds=2))


@torch.no_grad()
def test_snapshot_restore_and_fork_replay_a_block(make_backbone, make_clip):
    model = make_backbone(num_audio_sinks=2)
    clip = make_clip(model, seconds=3)
    cache = model.new_cache(2, window_seconds=2)
    for k in range(2):
        model(*clip.block(k), clip.text, cache=cache, block=k, commit=True)
    state = cache.snapshot(copy=True)
    first = model(*clip.block(2), clip.text, cache=cache, block=2, commit=True)
    twin = cache.fork(state)
    _assert_parity(model(*clip.block(2), clip.text, cache=twin, block=2), first)
    cache.restore(state)
    _assert_parity(model(*clip.block(2), clip.text, cache=cache, block=2), first)


@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
@torch.no_grad()
def test_relative_prefix_position_depends_only_on_window_content(make_backbone, rope_type):
    """Window 2, depth 1 (as tests/models/test_kv_cache.py): a block's output depends on its own and the two
    previous blocks' inputs plus the prefix. With "relative" positions the same three blocks give the same output
    at second 3 and at second 9 (up to diffusers' float32 RoPE angles); with "absolute" positions they do not."""
    from omniforcing.models.ltx2 import LTX2Architecture
    outputs = {}
    for policy in ("absolute", "relative"):
        model = make_backbone(num_audio_sinks=3, prefix_position=policy,
                              architecture=LTX2Architecture(num_layers=1, rope_type=rope_type))
        gen = torch.Generator().manual_seed(5)
        blocks = [(torch.randn(1, 3, 8, 2, 3, generator=gen), torch.randn(1, 25, 8, generator=gen)) for _ in range(3)]
        text = model.encode_text(["rolling"])
        prefix = (torch.randn(1, 1, 8, 2, 3, generator=gen), torch.randn(1, 1, 8, generator=gen))
        for start in (1, 7):  # the three fixed blocks at seconds 1..3 or 7..9, random junk before
            cache = model.new_cache(1, window_seconds=2)
            model(*prefix, torch.zeros(1, 1), torch.zeros(1, 1), text, cache=cache, block=0, commit=True)
            for k in range(1, start + 3):
                video, audio = blocks[k - start] if k >= start else (torch.randn(1, 3, 8, 2, 3),
                                                                     torch.randn(1, 25, 8))
                out = model(video, audio, torch.full((1, 3), 0.5), torch.full((1, 25), 0.5), text, cache=cache,
                            block=k, commit=True)
            outputs[policy, start] = out
    for index in range(2):
        # diffusers computes RoPE angles in float32 (~1e-4 rad at 9 s for the top frequency): measured 4e-5..1e-4
        assert (outputs["relative", 1][index] - outputs["relative", 7][index]).abs().max() <= 5e-4
        assert (outputs["absolute", 1][index] - outputs["absolute", 7][index]).abs().max() > 2e-2  # measured 0.07


@torch.no_grad()
def test_relative_policy_equals_full_forward_until_the_window_moves(make_backbone, make_clip):
    model = make_backbone(num_audio_sinks=2, prefix_position="relative")
    clip = make_clip(model, seconds=3)
    _assert_parity(_decode(model, clip, model.new_cache(2, window_seconds=3)), _full(model, clip, window_seconds=3))


@torch.no_grad()
def test_text_is_projected_once_per_prompt_binding(make_backbone, make_clip):
    model = make_backbone()
    clip = make_clip(model, seconds=2)
    projections = []
    model.transformer.caption_projection.register_forward_hook(lambda *args: projections.append(1))
    cache = model.new_cache(2)
    for k in range(2):
        model(*clip.block(k), clip.text, cache=cache, block=k)
        model(*clip.block(k), clip.text, cache=cache, block=k, commit=True)
    assert len(projections) == 1
    other = model.encode_text(["a dog barks", "rain"])
    with pytest.raises(ValueError, match="another TextContext"):
        model(*clip.block(2), other, cache=cache, block=2)
    cache.set_text(other)
    switched = model(*clip.block(2), other, cache=cache, block=2)
    assert len(projections) == 2
    twin = cache.fork()
    twin.set_text(clip.text)
    assert (switched[0] - model(*clip.block(2), clip.text, cache=twin, block=2)[0]).abs().max() > 1e-4
