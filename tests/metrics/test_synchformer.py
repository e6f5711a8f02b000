"""Synchformer / DeSync: the reference state-dict layout, divided attention, preprocessing, offsets on a tiny
random-weight build, errors, and (with the real weights) sign and scale on real media with a known offset."""

from __future__ import annotations

import os
from pathlib import Path

import einops
import pytest
import torch
from torch import Tensor

from omniforcing.metrics.extractors import InvalidWeightsError, MissingWeightsError
from omniforcing.metrics.extractors.synchformer import (
    SYNCHFORMER_PATH_ENV,
    SynchformerOffsets,
    audio_segments,
    offset_grid,
    video_segments,
)
from omniforcing.metrics.extractors.synchformer_network import DividedAttention, SynchformerNetwork
from omniforcing.metrics.suite import MetricSuite
from omniforcing.metrics.sync_metrics import DeSync

TINY = dict(width=32, depth=1, heads=2, sync_depth=1, sync_heads=2, image_size=32)


def _linear(prefix: str, fan_in: int, fan_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (fan_out, fan_in), f"{prefix}.bias": (fan_out,)}


def _norm(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}


def _encoder_layer(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    """torch.nn.TransformerEncoderLayer(d, dim_feedforward=4d) plus the reference BaseEncoderLayer's cls_token."""
    keys = {f"{prefix}.cls_token": (1, 1, d), f"{prefix}.self_attn.in_proj_weight": (3 * d, d),
            f"{prefix}.self_attn.in_proj_bias": (3 * d,)}
    keys |= _linear(f"{prefix}.self_attn.out_proj", d, d) | _linear(f"{prefix}.linear1", d, 4 * d)
    return keys | _linear(f"{prefix}.linear2", 4 * d, d) | _norm(f"{prefix}.norm1", d) | _norm(f"{prefix}.norm2", d)


def reference_state_dict_shapes(d: int = 768) -> dict[str, tuple[int, ...]]:
    """Key -> shape of av-benchmark's ``Synchformer().state_dict()`` (what ``synchformer_state_dict.pth`` holds),
    written out from the reference modules (``motionformer.py``, ``video_model_builder.py``, ``vit_helper.py``,
    ``ast.py``, ``hf_src/modeling_ast.py``, ``transformer.py``, ``synchformer.py``), not from our code."""
    v, a, t = "vfeat_extractor", "afeat_extractor", "transformer"
    keys = {f"{v}.cls_token": (1, 1, d), f"{v}.pos_embed": (1, 197, d), f"{v}.temp_embed": (1, 8, d),
            f"{v}.patch_embed.proj.weight": (d, 3, 16, 16), f"{v}.patch_embed.proj.bias": (d,),
            f"{v}.patch_embed_3d.proj.weight": (d, 3, 2, 16, 16), f"{v}.patch_embed_3d.proj.bias": (d,)}
    for i in range(12):  # DividedSpaceTimeBlock
        block = f"{v}.blocks.{i}"
        keys |= _norm(f"{block}.norm1", d) | _norm(f"{block}.norm2", d) | _norm(f"{block}.norm3", d)
        for attention in ("attn", "timeattn"):
            keys |= _linear(f"{block}.{attention}.qkv", d, 3 * d) | _linear(f"{block}.{attention}.proj", d, d)
        keys |= _linear(f"{block}.mlp.fc1", d, 4 * d) | _linear(f"{block}.mlp.fc2", 4 * d, d)
    keys |= _norm(f"{v}.norm", d) | _encoder_layer(f"{v}.spatial_attn_agg", d)
    ast = f"{a}.ast"
    keys |= {f"{ast}.embeddings.cls_token": (1, 1, d), f"{ast}.embeddings.distillation_token": (1, 1, d),
             f"{ast}.embeddings.position_embeddings": (1, 2 + 12 * 6, d),
             f"{ast}.embeddings.patch_embeddings.projection.weight": (d, 1, 16, 16),
             f"{ast}.embeddings.patch_embeddings.projection.bias": (d,)}
    for i in range(12):  # ASTLayer
        layer = f"{ast}.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            keys |= _linear(f"{layer}.attention.attention.{name}", d, d)
        keys |= _linear(f"{layer}.attention.output.dense", d, d) | _linear(f"{layer}.intermediate.dense", d, 4 * d)
        keys |= _linear(f"{layer}.output.dense", 4 * d, d)
        keys |= _norm(f"{layer}.layernorm_before", d) | _norm(f"{layer}.layernorm_after", d)
    keys |= _norm(f"{ast}.layernorm", d) | _encoder_layer(f"{a}.freq_attn_agg", d)
    keys |= _linear("vproj", d, d) | _linear("aproj", d, d)
    keys |= {f"{t}.OFF_tok": (1, 1, d), f"{t}.MOD_tok": (1, 1, d), f"{t}.pos_emb_cfg.pos_emb": (1, 198, d)}
    keys |= _norm(f"{t}.vis_in_lnorm", d) | _norm(f"{t}.aud_in_lnorm", d) | _norm(f"{t}.ln_f", d)
    for i in range(3):  # minGPT Block
        block = f"{t}.blocks.{i}"
        keys |= _norm(f"{block}.ln1", d) | _norm(f"{block}.ln2", d)
        for name in ("key", "query", "value", "proj"):
            keys |= _linear(f"{block}.attn.{name}", d, d)
        keys |= _linear(f"{block}.mlp.0", d, 4 * d) | _linear(f"{block}.mlp.2", 4 * d, d)
    return keys | _linear(f"{t}.off_head", d, 21)


def test_the_published_network_has_the_reference_state_dict_layout():
    with torch.device("meta"):
        network = SynchformerNetwork()
    ours = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    reference = reference_state_dict_shapes()
    assert sorted(set(reference) - set(ours)) == [] and sorted(set(ours) - set(reference)) == []
    assert {k: s for k, s in ours.items() if reference[k] != s} == {}


def reference_divided_attention(module: DividedAttention, x: Tensor, frames: int, axis: str) -> Tensor:
    """The reference ``vit_helper.DividedAttention.forward`` (einops formulation, explicit softmax)."""
    h, patches = module.heads, (x.shape[1] - 1) // frames
    q, k, v = (einops.rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in module.qkv(x).chunk(3, dim=-1))
    q = q * (q.shape[-1] ** -0.5)

    def attend(q_: Tensor, k_: Tensor, v_: Tensor) -> Tensor:
        return torch.einsum("bij,bjd->bid", torch.einsum("bid,bjd->bij", q_, k_).softmax(-1), v_)

    cls_out = attend(q[:, :1], k, v)
    pattern = "(b n) f d" if axis == "time" else "(b f) n d"
    q_, k_, v_ = (einops.rearrange(t[:, 1:], f"b (f n) d -> {pattern}", f=frames, n=patches) for t in (q, k, v))
    r = q_.shape[0] // q.shape[0]
    cls_k, cls_v = (einops.repeat(t[:, :1], "b () d -> (b r) () d", r=r) for t in (k, v))
    out = attend(q_, torch.cat((cls_k, k_), 1), torch.cat((cls_v, v_), 1))
    out = einops.rearrange(out, f"{pattern} -> b (f n) d", f=frames, n=patches)
    return module.proj(einops.rearrange(torch.cat((cls_out, out), 1), "(b h) n d -> b n (h d)", h=h))


@pytest.mark.parametrize("axis", ["time", "space"])
def test_divided_attention_matches_the_reference_formulation(axis):
    torch.manual_seed(0)
    module = DividedAttention(16, heads=2)
    x = torch.randn(3, 1 + 4 * 5, 16)
    torch.testing.assert_close(module(x, 4, axis), reference_divided_attention(module, x, 4, axis))


def _reference_pool(layer: torch.nn.TransformerEncoderLayer, x: Tensor) -> Tensor:
    """Reference ``BaseEncoderLayer.forward``: prepend CLS, run the torch encoder layer, read CLS."""
    x = torch.cat((layer.cls_token.expand(x.shape[0], -1, -1), x), dim=-2)
    return torch.nn.TransformerEncoderLayer.forward(layer, x)[:, 0, :]


def _reference_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return (q @ k.transpose(-2, -1) / k.shape[-1] ** 0.5).softmax(-1) @ v


def reference_video_features(net: SynchformerNetwork, vis: Tensor) -> Tensor:
    """``Synchformer.extract_vfeats`` + ``MotionFormer.forward`` + ``VisionTransformer.forward_features``."""
    mf = net.vfeat_extractor
    b, s, frames, c, h, w = vis.shape
    x = vis.permute(0, 1, 3, 2, 4, 5).reshape(b * s, c, frames, h, w)
    x = mf.patch_embed_3d.proj(x).flatten(2).transpose(1, 2)
    x = torch.cat((mf.cls_token.expand(b * s, -1, -1), x), dim=1)
    npatch, resolution = mf.grid ** 2, mf.time_tokens
    tile = mf.pos_embed[:, 1:, :].repeat(1, resolution, 1) + mf.temp_embed.repeat_interleave(npatch, 1)
    x = x + torch.cat([mf.pos_embed[:, 0, :].unsqueeze(1), tile], dim=1)
    for blk in mf.blocks:
        x = x + reference_divided_attention(blk.timeattn, blk.norm3(x), resolution, "time")
        x = x + reference_divided_attention(blk.attn, blk.norm1(x), resolution, "space")
        x = x + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.norm2(x))))
    x = mf.norm(x[:, 1:, :])
    d = x.shape[-1]
    x = x.permute(0, 2, 1).reshape(b * s, d, resolution, mf.grid, mf.grid)
    x = _reference_pool(mf.spatial_attn_agg, einops.rearrange(x, "BS D t h w -> (BS t) (h w) D"))
    return einops.rearrange(x, "(BS t) D -> BS t D", t=resolution).reshape(b, s, resolution, d)


def reference_audio_features(net: SynchformerNetwork, aud: Tensor) -> Tensor:
    """``Synchformer.extract_afeats`` + ``AST.forward_segments`` + Hugging Face ``ASTModel`` (as modified)."""
    a = net.afeat_extractor
    b, s, mel_bins, spec_frames = aud.shape
    x = aud.permute(0, 1, 3, 2).reshape(b * s, spec_frames, mel_bins)  # (BS, T, F) as the reference passes it
    emb = a.ast.embeddings
    x = emb.patch_embeddings.projection(x.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
    x = torch.cat((emb.cls_token.expand(b * s, -1, -1), emb.distillation_token.expand(b * s, -1, -1), x), 1)
    x = x + emb.position_embeddings
    for layer in a.ast.encoder.layer:
        att, heads = layer.attention.attention, layer.attention.attention.heads
        h = layer.layernorm_before(x)
        q, k, v = (t(h).view(b * s, -1, heads, h.shape[-1] // heads).permute(0, 2, 1, 3)
                   for t in (att.query, att.key, att.value))
        context = _reference_attention(q, k, v).permute(0, 2, 1, 3).reshape(b * s, -1, h.shape[-1])
        x = layer.attention.output.dense(context) + x
        x = layer.output.dense(torch.nn.functional.gelu(layer.intermediate.dense(layer.layernorm_after(x)))) + x
    x = a.ast.layernorm(x)[:, 2:, :]
    d, f, t = x.shape[-1], a.freq_patches, a.time_patches
    x = x.permute(0, 2, 1).reshape(b * s, d, f, t).permute(0, 3, 2, 1).reshape(b * s * t, f, d)
    return _reference_pool(a.freq_attn_agg, x).view(b * s, t, d).reshape(b, s, t, d)


def reference_logits(net: SynchformerNetwork, vis: Tensor, aud: Tensor) -> Tensor:
    """``Synchformer.compare_v_a`` + ``GlobalTransformer.forward`` (minGPT blocks)."""
    g = net.transformer
    v, a = net.vproj(vis).flatten(1, 2), net.aproj(aud).flatten(1, 2)
    b = v.shape[0]
    x = torch.cat((g.OFF_tok.repeat(b, 1, 1), g.vis_in_lnorm(v), g.MOD_tok.repeat(b, 1, 1), g.aud_in_lnorm(a)), 1)
    x = x + g.pos_emb_cfg.pos_emb
    for blk in g.blocks:
        h, heads = blk.ln1(x), blk.attn.heads
        q, k, v_ = (t(h).view(b, -1, heads, h.shape[-1] // heads).transpose(1, 2)
                    for t in (blk.attn.query, blk.attn.key, blk.attn.value))
        x = x + blk.attn.proj(_reference_attention(q, k, v_).transpose(1, 2).reshape(b, -1, h.shape[-1]))
        x = x + blk.mlp(blk.ln2(x))
    return g.off_head(g.ln_f(x)[:, 0, :])


def test_network_matches_a_transcription_of_the_reference_forward():
    torch.manual_seed(0)
    net = SynchformerNetwork(**TINY).eval()
    for parameter in net.parameters():  # no zero or identity initialisation may hide a wrong order
        torch.nn.init.normal_(parameter, std=0.2)
    vis, aud = torch.rand(2, 14, 16, 3, 32, 32) * 2 - 1, torch.randn(2, 14, 128, 66)
    with torch.no_grad():
        video, audio = net.video_features(vis), net.audio_features(aud)
        torch.testing.assert_close(video, reference_video_features(net, vis), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(audio, reference_audio_features(net, aud), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(net.offset_logits(video, audio), reference_logits(net, video, audio),
                                   rtol=1e-4, atol=1e-4)


def test_preprocessing_shapes_rates_and_ranges():
    video = torch.randint(0, 256, (2, 60, 3, 24, 40), dtype=torch.uint8)  # 2.5 s at 24 fps
    segments = video_segments(video, 24.0, 32)
    assert segments.shape == (2, (62 - 16) // 8 + 1, 16, 3, 32, 32)  # 62 frames at 25 fps
    assert segments.min() >= -1 and segments.max() <= 1
    torch.testing.assert_close(segments[:, 1, 0], segments[:, 0, 8])  # 8-frame hop
    audio = torch.rand(2, 2, 48000 * 2) * 2 - 1  # 2 s stereo at 48 kHz
    mels = audio_segments(audio, 48000, 128, 66)
    assert mels.shape == (2, (32000 - 10240) // 5120 + 1, 128, 66)
    assert torch.all(mels[..., 65] == (0 + 4.2677393) / (2 * 4.5689974))  # 65 STFT frames, zero-padded to 66
    assert offset_grid().tolist() == pytest.approx([round(-2 + 0.2 * i, 1) for i in range(21)])


def save_tiny(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(SynchformerNetwork(**TINY).state_dict(), path)
    return path


def clips(seconds: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (2, round(25 * seconds), 3, 36, 48), dtype=torch.uint8, generator=gen)
    return video, torch.rand(2, 1, round(16000 * seconds), generator=gen) * 2 - 1


def test_tiny_random_build_gives_deterministic_offsets_on_the_grid(tmp_path):
    offsets = SynchformerOffsets(save_tiny(tmp_path / "tiny.pth"), network=SynchformerNetwork(**TINY))
    assert offsets.window_seconds == pytest.approx(4.8) and not offsets.is_reference  # not the published file
    video, audio = clips(6.0)
    first, again = offsets(video, audio, 25.0, 16000), offsets(video, audio, 25.0, 16000)
    assert first.shape == (2, 2) and torch.equal(first, again)
    assert all(any(abs(value - g) < 1e-6 for g in offset_grid().tolist()) for value in first.flatten().tolist())
    with pytest.raises(ValueError, match=r"at least 4.8 s .* got 3.00 s"):
        offsets(*clips(3.0), 25.0, 16000)


def test_missing_and_wrong_weights_give_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(SYNCHFORMER_PATH_ENV, raising=False)
    with pytest.raises(MissingWeightsError, match=SYNCHFORMER_PATH_ENV) as missing:
        SynchformerOffsets()
    assert "\n" not in str(missing.value)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        SynchformerOffsets(tmp_path / "nowhere.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InvalidWeightsError, match="missing keys") as wrong:
        SynchformerOffsets(tmp_path / "other.pth", network=SynchformerNetwork(**TINY))
    assert "\n" not in str(wrong.value)


def test_desync_is_the_mean_absolute_offset_over_windows():
    metric = DeSync()
    metric.update(torch.tensor([[0.2, -0.4], [0.0, 1.0]]))
    values = metric.compute()
    assert float(values["desync"]) == pytest.approx(0.4) and float(values["desync_signed"]) == pytest.approx(0.2)
    assert float(values["desync_clips"]) == 2


def test_suite_reports_desync_only_from_the_published_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(SYNCHFORMER_PATH_ENV, raising=False)
    assert SYNCHFORMER_PATH_ENV in MetricSuite(["desync"]).skipped["desync"]
    tiny = save_tiny(tmp_path / "tiny.pth")
    assert "not " in MetricSuite(["desync"], synchformer_path=tiny).skipped["desync"]  # a stand-in is refused


def test_suite_plumbing_with_a_trusted_tiny_network(tmp_path, monkeypatch):
    tiny = save_tiny(tmp_path / "tiny.pth")
    monkeypatch.setattr("omniforcing.metrics.suite.SynchformerOffsets", lambda path: SynchformerOffsets(
        tiny, network=SynchformerNetwork(**TINY), check_known_hash=False))
    suite = MetricSuite(["desync"])
    suite.update(*clips(5.0), fps=25.0, sample_rate=16000)
    suite.update(*clips(2.0), fps=25.0, sample_rate=16000)  # too short for a 4.8-s window: counted, left out
    values = suite.compute()
    assert values["desync_clips"] == 2 and 0 <= values["desync"] <= 2 and suite.failures["desync"] == 1
    suite.reset()
    assert "desync" not in suite.compute()


# ------------------------------------------------------------------------------ real weights
SHIFT_S = 0.2  # one offset class


def _decode(path: Path) -> tuple[Tensor, float, Tensor]:
    import av
    import numpy as np

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = [frame.to_ndarray(format="rgb24", width=398, height=224) for frame in container.decode(stream)]
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                  for out in resampler.resample(frame)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None], fps, torch.from_numpy(np.concatenate(chunks))


@pytest.mark.requires_weights
def test_real_weights_recover_sign_and_scale_of_a_known_audio_shift(shared_media: Path):
    path = os.environ.get(SYNCHFORMER_PATH_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(f"set ${SYNCHFORMER_PATH_ENV} to synchformer_state_dict.pth (MMAudio ext_weights)")
    offsets = SynchformerOffsets(path)
    assert offsets.is_reference, "the file is not MMAudio's synchformer_state_dict.pth"
    video, fps, audio = _decode(shared_media / "bigbuckbunny.mp4")  # 5.3 s, 25 fps, real foley
    start, length = round(0.25 * fps), round(4.8 * fps)
    clip = video[:, start:start + length]

    def audio_ahead_by(seconds: float) -> Tensor:  # the audio shows what the picture shows `seconds` later
        begin = round((0.25 + seconds) * 16000)
        return audio[begin:begin + round(4.8 * 16000)][None, None]

    predicted = {shift: float(offsets(clip, audio_ahead_by(shift), fps, 16000)[0, 0])
                 for shift in (-SHIFT_S, 0.0, SHIFT_S)}
    assert abs(predicted[0.0]) <= 0.2, predicted
    assert predicted[SHIFT_S] > predicted[0.0] > predicted[-SHIFT_S], predicted  # sign
    assert predicted[SHIFT_S] - predicted[-SHIFT_S] == pytest.approx(2 * SHIFT_S, abs=0.21), predicted  # scale
