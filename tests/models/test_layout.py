"""Block layout: zero truncation, both prefix layouts, partial tails, physical time, masks."""

from __future__ import annotations

import pytest
import torch

from omniforcing.models.layout import (
    BlockLayout,
    block_causal_masks,
    block_visibility,
    window_blocks,
)


def test_v1_prefix_is_the_lead_then_one_second_per_block():
    layout = BlockLayout.for_seconds(3, "v1")
    assert (layout.num_video, layout.num_audio, layout.num_blocks) == (10, 76, 4)
    assert layout.block_slices(0) == (slice(0, 1), slice(0, 1))
    assert layout.block_slices(1) == (slice(1, 4), slice(1, 26))
    assert layout.block_slices(3) == (slice(7, 10), slice(51, 76))
    assert layout.video_block_index.tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert torch.bincount(layout.audio_block_index).tolist() == [1, 25, 25, 25]
    assert layout.is_complete


def test_v2_prefix_folds_the_first_second_into_block_0():
    layout = BlockLayout.for_seconds(4, "v2")  # 16 = 4 + 3*4 video, 126 = 26 + 4*25 audio (the official 4-3-3-3-3)
    assert (layout.num_video, layout.num_audio, layout.num_blocks) == (13, 101, 4)
    assert layout.block_slices(0) == (slice(0, 4), slice(0, 26))
    assert layout.block_slices(1) == (slice(4, 7), slice(26, 51))
    assert torch.bincount(layout.video_block_index).tolist() == [4, 3, 3, 3]
    assert torch.bincount(BlockLayout.for_latents(16, prefix="v2").audio_block_index).tolist() == [26, 25, 25, 25, 25]


@pytest.mark.parametrize("prefix", ["v1", "v2"])
def test_zero_truncation_pairs_counts_both_ways(prefix):
    for seconds in range(6):
        layout = BlockLayout.for_latents(1 + 3 * seconds, prefix=prefix)
        assert layout.num_audio == 1 + 25 * seconds
        assert BlockLayout.for_latents(num_audio=1 + 25 * seconds, prefix=prefix).num_video == 1 + 3 * seconds


@pytest.mark.parametrize("prefix", ["v1", "v2"])
def test_partial_tail_gets_proportional_audio(prefix):
    one = BlockLayout.for_latents(1 + 3 * 2 + 1, prefix=prefix)
    two = BlockLayout.for_latents(1 + 3 * 2 + 2, prefix=prefix)
    assert (one.num_audio, two.num_audio) == (1 + 50 + 8, 1 + 50 + 17)  # round(25/3), round(50/3)
    assert not one.is_complete and not two.is_complete
    vs, as_ = two.block_slices(two.num_blocks - 1)
    assert (vs.stop - vs.start, as_.stop - as_.start) == (2, 17)
    assert BlockLayout.for_latents(num_audio=1 + 50 + 17, prefix=prefix).num_video == 9


def test_counts_that_do_not_pair_are_rejected():
    with pytest.raises(ValueError, match="zero truncation"):
        BlockLayout.for_latents(10, 75)
    with pytest.raises(ValueError, match="pair with whole video latents"):
        BlockLayout.for_latents(num_audio=1 + 25 + 5)
    with pytest.raises(ValueError, match="prefix"):
        BlockLayout.for_latents(4, prefix="v3")


def test_spans_are_physical_seconds():
    layout = BlockLayout.for_seconds(1)
    assert layout.video_spans[0].tolist() == [0.0, 1 / 24]  # latent 0 = frame 0 alone
    assert layout.video_spans[1].tolist() == pytest.approx([1 / 24, 9 / 24])  # frames 1..8
    assert layout.video_spans[3].tolist() == pytest.approx([17 / 24, 25 / 24])
    assert layout.audio_spans[0].tolist() == pytest.approx([0.0, 0.04])
    assert layout.audio_spans[25].tolist() == pytest.approx([1.0, 1.04])


def test_visibility_rule_with_window():
    blocks = torch.tensor([0, 1, 2, 3, 4])
    full = block_visibility(blocks, blocks)
    assert torch.equal(full, torch.tril(torch.ones(5, 5, dtype=torch.bool)))
    windowed = block_visibility(blocks, blocks, window=2)
    assert windowed[4].tolist() == [True, False, False, True, True]  # prefix + own block + one before
    assert windowed[1].tolist() == [True, True, False, False, False]


def test_window_must_be_whole_seconds():
    assert window_blocks(None) is None and window_blocks(3.0) == 3
    for bad in (0, 1.5, float("inf")):
        with pytest.raises(ValueError, match="whole number"):
            window_blocks(bad)


@pytest.mark.parametrize("prefix", ["v1", "v2"])
def test_masks_match_token_level_rule_and_are_cached(prefix):
    layout = BlockLayout.for_latents(1 + 3 * 3 + 1, prefix=prefix)
    tokens, sinks = 4, 2
    masks = block_causal_masks(layout, tokens, sinks, None, None)
    assert block_causal_masks(layout, tokens, sinks, None, None) is masks
    video = layout.video_block_index.repeat_interleave(tokens).tolist()
    audio = [0] * sinks + layout.audio_block_index.tolist()
    for name, queries, keys in (("video_self", video, video), ("audio_self", audio, audio),
                                ("audio_to_video", video, audio), ("video_to_audio", audio, video)):
        mask = getattr(masks, name)
        expected = torch.tensor([[kb <= qb for kb in keys] for qb in queries])
        assert torch.equal(mask, expected), name
    assert masks.audio_to_video[:, :sinks].all() and masks.audio_self[:, :sinks].all()  # sinks seen by all
