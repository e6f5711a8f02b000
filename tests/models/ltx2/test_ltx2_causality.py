"""LTX-2 adapter, block-causal mode: later blocks never change earlier outputs (both modalities, with sinks);
sinks have the identity rotation; cross-modal attention carries information within a block."""

from __future__ import annotations

import pytest
import torch

from omniforcing.models.ltx2.attention import rotate


@pytest.mark.parametrize("prefix,sinks", [("v1", 3), ("v2", 2), ("v1", 0)])
@torch.no_grad()
def test_changing_a_later_block_leaves_earlier_outputs_unchanged(make_backbone, make_clip, prefix, sinks):
    model = make_backbone(prefix=prefix, num_audio_sinks=sinks, causal=True)
    clip = make_clip(model, seconds=3)
    base_v, base_a = model(clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)
    for k in range(1, clip.layout.num_blocks):
        vs, as_ = clip.layout.block_slices(k)
        for modality in ("video", "audio"):
            video, audio = clip.video.clone(), clip.audio.clone()
            (video[:, vs] if modality == "video" else audio[:, as_]).add_(1.0)
            out_v, out_a = model(video, audio, clip.t_video, clip.t_audio, clip.text)
            assert (out_v[:, : vs.start] - base_v[:, : vs.start]).abs().max() <= 1e-6
            assert (out_a[:, : as_.start] - base_a[:, : as_.start]).abs().max() <= 1e-6
            # ... and does change the block itself, in both streams (cross-modal attention inside a block)
            assert (out_v[:, vs] - base_v[:, vs]).abs().max() > 1e-4
            assert (out_a[:, as_] - base_a[:, as_]).abs().max() > 1e-4


@torch.no_grad()
def test_bidirectional_mode_is_not_causal(make_backbone, make_clip):
    model = make_backbone()
    clip = make_clip(model, seconds=2)
    video = clip.video.clone()
    video[:, -1] += 1.0
    base = model(clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)[1]
    assert (model(video, clip.audio, clip.t_video, clip.t_audio, clip.text)[1][:, :1] - base[:, :1]).abs().max() > 1e-4


@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
@torch.no_grad()
def test_sink_rotation_is_the_identity(make_backbone, rope_type):
    from omniforcing.models.ltx2 import LTX2Architecture
    model = make_backbone(num_audio_sinks=4, architecture=LTX2Architecture(rope_type=rope_type))
    sinks, width = model.audio_sinks.shape
    rope = model.coords.audio(0, 3, sinks, model.device)
    x = torch.randn(2, sinks + 3, width)
    for table in (rope.self_rope, rope.cross_rope):
        table = tuple(t.expand(2, *t.shape[1:]) for t in table)
        rotated = rotate(x, table, rope_type)
        assert torch.equal(rotated[:, :sinks], x[:, :sinks])  # queries and keys of sinks are not rotated
        assert (rotated[:, sinks:] - x[:, sinks:]).abs().max() > 1e-3  # real audio latents are
    # the audio latents' tables are the transformer's own, at absolute positions
    later = model.coords.audio(5, 3, 0, model.device).self_rope[0]
    whole = model.coords.audio(0, 8, 0, model.device).self_rope[0]
    assert torch.equal(later, whole[..., 5:, :])


@torch.no_grad()
def test_video_tables_of_a_later_block_equal_the_whole_clips(make_backbone):
    model = make_backbone()
    hw = model.video_grid[0] * model.video_grid[1]
    later, whole = model.coords.video(4, 3, model.device), model.coords.video(0, 7, model.device)
    for part, full in zip(later, whole):
        assert torch.equal(part[0], full[0][..., 4 * hw:, :]) and torch.equal(part[1], full[1][..., 4 * hw:, :])
