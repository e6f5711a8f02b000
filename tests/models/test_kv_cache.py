"""Cached block-by-block decoding equals the masked full forward; rolling windows; cache state rules."""

from __future__ import annotations

import pytest
import torch

from omniforcing.models.layout import BlockLayout

LAYOUTS = [("v1", 0), ("v1", 4), ("v2", 0), ("v2", 3)]


def _inputs_of(x, modality, vs, as_):
    video = x.video[:, vs] if modality != "audio" else None
    audio = x.audio[:, as_] if modality != "video" else None
    t_video = x.t_video[:, vs] if video is not None else None
    t_audio = x.t_audio[:, as_] if audio is not None else None
    return video, audio, t_video, t_audio


def _decode(model, x, cache, modality="joint", chunks=None, denoise_steps=1):
    """Decode the clip chunk by chunk (``chunks`` = blocks per call); each chunk first runs ``denoise_steps``
    non-committing calls on noise (as a sampler would), then commits the clip's latents."""
    chunks = chunks or [1] * x.layout.num_blocks
    outs_v, outs_a, block = [], [], 0
    for size in chunks:
        vs = slice(x.layout.block_slices(block)[0].start, x.layout.block_slices(block + size - 1)[0].stop)
        as_ = slice(x.layout.block_slices(block)[1].start, x.layout.block_slices(block + size - 1)[1].stop)
        video, audio, t_video, t_audio = _inputs_of(x, modality, vs, as_)
        for _ in range(denoise_steps):
            noisy_v = None if video is None else torch.randn_like(video)
            noisy_a = None if audio is None else torch.randn_like(audio)
            model(noisy_v, noisy_a, t_video, t_audio, x.text, cache=cache, block=block)
        out_v, out_a = model(video, audio, t_video, t_audio, x.text, cache=cache, block=block, commit=True)
        outs_v.append(out_v)
        outs_a.append(out_a)
        block += size
    cat = lambda outs: None if outs[0] is None else torch.cat(outs, 1)  # noqa: E731
    return cat(outs_v), cat(outs_a)


def _full(model, x, modality="joint", **kwargs):
    video, audio, t_video, t_audio = _inputs_of(x, modality, slice(None), slice(None))
    return model(video, audio, t_video, t_audio, x.text, causal=True, **kwargs)


def _assert_parity(got, want):
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert (g - w).abs().max() <= 1e-5


@pytest.mark.parametrize("modality", ["joint", "video", "audio"])
@pytest.mark.parametrize("prefix,sinks", LAYOUTS)
@torch.no_grad()
def test_block_by_block_decoding_equals_masked_full_forward(make_model, make_inputs, prefix, sinks, modality):
    model = make_model(prefix=prefix, num_audio_sinks=sinks)
    x = make_inputs(model, seconds=3)
    want = _full(model, x, modality)
    got = _decode(model, x, model.new_cache(2), modality)
    _assert_parity(got, want)


@pytest.mark.parametrize("prefix,sinks", [("v1", 4), ("v2", 0)])
@torch.no_grad()
def test_multi_block_chunks_and_partial_tail(make_model, make_inputs, prefix, sinks):
    model = make_model(prefix=prefix, num_audio_sinks=sinks)
    x = make_inputs(model, seconds=3, extra_video=2)  # ends with a partial block of 2 video + 17 audio latents
    want = _full(model, x)
    chunks = [2, 1, x.layout.num_blocks - 3]
    cache = model.new_cache(2)
    _assert_parity(_decode(model, x, cache, chunks=chunks), want)
    with pytest.raises(ValueError, match="partial block"):
        model(*x.block(0), x.text, cache=cache, block=cache.next_block)


@pytest.mark.parametrize("prefix,sinks", [("v1", 4), ("v2", 2)])
@torch.no_grad()
def test_rolling_window_equals_windowed_full_forward(make_model, make_inputs, prefix, sinks):
    model = make_model(prefix=prefix, num_audio_sinks=sinks)
    x = make_inputs(model, seconds=6)
    want = _full(model, x, window_seconds=2, audio_window_seconds=3)
    assert (want[0] - _full(model, x)[0]).abs().max() > 1e-3  # the window matters
    cache = model.new_cache(2, window_seconds=2, audio_window_seconds=3)
    sizes = []
    outs = [], []
    for k in range(x.layout.num_blocks):
        for out, new in zip(outs, model(*x.block(k), x.text, cache=cache, block=k, commit=True)):
            out.append(new)
        sizes.append(cache.num_tokens())
        pinned_audio = x.layout.block_slices(0)[1].stop + sinks  # prefix audio latents and sinks stay
        assert (cache.video_blocks == 0).any() and int((cache.audio_blocks == 0).sum()) == pinned_audio
        assert cache.video_blocks.unique().numel() <= 2 and cache.audio_blocks.unique().numel() <= 3
    _assert_parity([torch.cat(o, 1) for o in outs], want)
    full_v, full_a = sizes[-1]
    assert all(size == (full_v, full_a) for size in sizes[-3:])  # constant once the window is full
    assert sizes[0] < sizes[-1]


@torch.no_grad()
def test_chunked_decoding_inside_a_window(make_model, make_inputs):
    model = make_model(num_audio_sinks=2)
    x = make_inputs(model, seconds=5)
    want = _full(model, x, window_seconds=2)
    _assert_parity(_decode(model, x, model.new_cache(2, window_seconds=2), chunks=[3, 2, 1]), want)


@torch.no_grad()
def test_non_committing_calls_leave_the_cache_unchanged(make_model, make_inputs):
    model = make_model(num_audio_sinks=2)
    x = make_inputs(model, seconds=2)
    cache = model.new_cache(2)
    model(*x.block(0), x.text, cache=cache, block=0, commit=True)
    before = cache.snapshot()
    keys = cache.history(0).video_self.valid().key.clone()
    for _ in range(3):
        model(*x.block(1), x.text, cache=cache, block=1)
    assert cache.snapshot() is before and cache.next_block == 1
    assert torch.equal(cache.history(0).video_self.valid().key, keys)
    model(*x.block(1), x.text, cache=cache, block=1, commit=True)
    assert cache.next_block == 2 and cache.snapshot() is not before


@torch.no_grad()
def test_cache_misuse_is_reported(make_model, make_inputs):
    model = make_model()
    x = make_inputs(model, seconds=2)
    cache = model.new_cache(2)
    with pytest.raises(ValueError, match="must start at block 0"):
        model(*x.block(1), x.text, cache=cache, block=1)
    model(*x.block(0), x.text, cache=cache, block=0, commit=True)
    video, _, t_video, _ = x.block(1)
    with pytest.raises(ValueError, match="modalities"):
        model(video, None, t_video, None, x.text, cache=cache, block=1)
    with pytest.raises(ValueError, match="batch size"):
        model(*[t[:1] for t in x.block(1)], model.encode_text(["one"]), cache=cache, block=1)
    with pytest.raises(ValueError, match="another TextContext"):
        model(*x.block(1), model.encode_text(["a", "b"]), cache=cache, block=1)
    with pytest.raises(ValueError, match="block-causal"):
        model(*x.block(1), x.text, cache=cache, block=1, causal=False)


@torch.no_grad()
def test_relative_prefix_position_depends_only_on_window_content(make_model):
    """Window 2, depth 1: a block's output depends on its own and the two previous blocks' inputs (self-attention
    reads block k-1, cross-modal attention reads block k-1's states after *its* self-attention over k-2) plus the
    prefix. With "relative" positions, the same three blocks give the same output at second 3 and at second 9;
    with "absolute" positions they do not (the prefix is farther away and sink scores see absolute phase)."""
    outputs = {}
    for policy in ("absolute", "relative"):
        model = make_model(num_audio_sinks=3, prefix_position=policy, depth=1)
        gen = torch.Generator().manual_seed(5)
        blocks = [(torch.randn(1, 3, 4, 2, 2, generator=gen), torch.randn(1, 25, 3, generator=gen)) for _ in range(3)]
        text = model.encode_text(["rolling"])
        prefix = (torch.randn(1, 1, 4, 2, 2, generator=gen), torch.randn(1, 1, 3, generator=gen))
        for start in (1, 7):  # the three fixed blocks at seconds 1..3 or 7..9, random junk before
            cache = model.new_cache(1, window_seconds=2)
            model(*prefix, torch.zeros(1, 1), torch.zeros(1, 1), text, cache=cache, block=0, commit=True)
            for k in range(1, start + 3):
                video, audio = blocks[k - start] if k >= start else (torch.randn(1, 3, 4, 2, 2), torch.randn(1, 25, 3))
                out = model(video, audio, torch.full((1, 3), 0.5), torch.full((1, 25), 0.5), text, cache=cache,
                            block=k, commit=True)
            outputs[policy, start] = out
    for index in range(2):
        assert (outputs["relative", 1][index] - outputs["relative", 7][index]).abs().max() <= 1e-5
        assert (outputs["absolute", 1][index] - outputs["absolute", 7][index]).abs().max() > 1e-3


@torch.no_grad()
def test_relative_policy_equals_full_forward_until_the_window_moves(make_model, make_inputs):
    model = make_model(num_audio_sinks=2, prefix_position="relative")
    x = make_inputs(model, seconds=3)
    _assert_parity(_decode(model, x, model.new_cache(2, window_seconds=3)), _full(model, x, window_seconds=3))


def test_layout_of_cached_chunks_is_checked(make_model, make_inputs):
    model = make_model()
    x = make_inputs(model, seconds=2)
    cache = model.new_cache(2)
    with torch.no_grad(), pytest.raises(ValueError, match="pair"):
        model(x.video[:, :1], x.audio[:, :3], x.t_video[:, :1], x.t_audio[:, :3], x.text, cache=cache)
    assert BlockLayout.for_latents(1).num_blocks == 1
