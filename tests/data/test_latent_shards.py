"""Pre-encoding: media shards -> latent shards -> AVDataModule batches, resume, and the codec check."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from omniforcing.codecs import AVCodec, CausalVideoAutoencoder, MelAudioCodec, PatchVideoCodec
from omniforcing.data.datamodule import AVDataModule
from omniforcing.data.decoding import decode_media, parse_metadata, shifted_events
from omniforcing.data.latent_shards import check_latent_shards, encode_latent_shards
from omniforcing.data.shards import iter_tar_samples, resolve_shards
from omniforcing.errors import InvalidInputError
from omniforcing.types import ClipSpec

WINDOW = ClipSpec(seconds=1)


def tiny_learned_codec(seed: int = 0) -> AVCodec:
    """A tiny causal video autoencoder (random weights, fitted-looking statistics) with the mel codec."""
    torch.manual_seed(seed)
    video = CausalVideoAutoencoder(latent_channels=4, widths=(4, 8, 8), group_width=16)
    video.normalizer.mean.uniform_(-0.1, 0.1)
    video.normalizer.std.uniform_(0.5, 2.0)
    return AVCodec(video, MelAudioCodec(griffin_lim_iters=2, nnls_iters=2)).eval()


def media_window(shards: Path, key: str, offset: int, spec: ClipSpec) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Metadata, video ``(T, 3, H, W)`` and audio ``(1, S)`` of the window at ``offset`` s of sample ``key``."""
    for shard in resolve_shards(str(shards)):
        for found, members in iter_tar_samples(shard):
            if found == key:
                meta = parse_metadata(members)
                whole = ClipSpec(meta["seconds"], spec.fps, spec.sample_rate, spec.size)
                example = decode_media({"__key__": key, **members}, meta, whole, None)
                first_frame, first_sample = spec.fps * offset, spec.sample_rate * offset
                return (meta, example.video[first_frame:first_frame + spec.num_frames],
                        example.audio[:, first_sample:first_sample + spec.num_samples])
    raise KeyError(key)


def latent_batches(folder: Path, spec: ClipSpec, codec: AVCodec | None = None) -> list:
    """Every validation batch of the latent shards in ``folder`` (after the datamodule's setup check)."""
    data = AVDataModule(str(folder), val_shards=str(folder), clip=spec, batch_size=4, num_workers=0, latents=True)
    if codec is not None:
        data.trainer = SimpleNamespace(lightning_module=nn.ModuleDict({"codec": codec}))
    data.setup("fit")
    return list(data.val_dataloader())


@pytest.fixture(scope="module")
def learned_latents(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[AVCodec, Path, dict]:
    codec = tiny_learned_codec()
    out = tmp_path_factory.mktemp("latents")
    manifest = encode_latent_shards(codec, resolve_shards(str(tiny_shards)), out, seconds=1, stride_seconds=1,
                                    shard_size=6, batch_size=4, progress=False)
    return codec, out, manifest


def test_encode_writes_every_window_with_its_metadata(learned_latents, tiny_shards):
    _, out, manifest = learned_latents
    # 8 stored clips of 2 s -> windows at 0 s and 1 s of each, in shards of 6
    assert manifest["samples"] == 16 and manifest["shards"] == ["shard-000000.tar", "shard-000001.tar",
                                                                 "shard-000002.tar"]
    assert json.loads((out / "dataset.json").read_text())["complete"]
    records = [parse_metadata(m) for shard in resolve_shards(str(out)) for _, m in iter_tar_samples(shard)]
    assert [(r["source_key"], r["latent_offset_seconds"]) for r in records[:4]] == [
        ("00000000", 0.0), ("00000000", 1.0), ("00000001", 0.0), ("00000001", 1.0)]
    stored, _, _ = media_window(tiny_shards, "00000000", 0, WINDOW)
    assert records[0]["caption"] == stored["caption"] and records[0]["events"] == stored["events"]
    assert records[0]["seconds"] == 1 and records[0]["codec_fingerprint"] == manifest["codec_fingerprint"]


def test_datamodule_batch_equals_the_codec_encoding_of_the_same_window(learned_latents, tiny_shards):
    codec, out, _ = learned_latents
    batches = latent_batches(out, WINDOW, codec)
    assert sum(len(b) for b in batches) == 16 and batches[0].video is None and batches[0].audio is None
    batch = batches[0]
    for i, info in enumerate(batch.info[:2]):  # samples 0 and 1: clip 0 at 0 s and at 1 s
        meta, video, audio = media_window(tiny_shards, "00000000", int(info.offset), WINDOW)
        with torch.no_grad():
            video_latents, audio_latents = codec.video.encode(video[None]), codec.audio.encode(audio[None])
        torch.testing.assert_close(batch.video_latents[i], video_latents[0], rtol=0, atol=0)
        torch.testing.assert_close(batch.audio_latents[i], audio_latents[0], rtol=0, atol=0)
        # event times are relative to the window start, as for a media window cut at the same offset
        torch.testing.assert_close(info.event_times, shifted_events(meta, info.offset, WINDOW.duration))
    assert [info.offset for info in batch.info[:2]] == [0.0, 1.0]
    assert batch.captions[0] == media_window(tiny_shards, "00000000", 0, WINDOW)[0]["caption"]


def test_patch_codec_latent_shards_decode_to_the_exact_frames(tiny_shards, tmp_path):
    codec = AVCodec(PatchVideoCodec(), MelAudioCodec()).eval()
    encode_latent_shards(codec, resolve_shards(str(tiny_shards))[:1], tmp_path, seconds=2, progress=False)
    batch = latent_batches(tmp_path, ClipSpec(seconds=1), codec)[0]
    assert batch.video_latents.shape == (2, 4, 1536, 4, 4) and batch.audio_latents.shape == (2, 26, 256)
    _, video, _ = media_window(tiny_shards, "00000000", 0, ClipSpec(seconds=1))  # window 0 = stored clip 0
    # a shorter clip is the first latents of the window: exact for a causal codec
    torch.testing.assert_close(codec.video.decode(batch.video_latents[:1])[0], video, rtol=0, atol=1e-6)


def test_rerun_resumes_and_other_settings_are_refused(tiny_shards, tmp_path):
    codec = AVCodec(PatchVideoCodec(), MelAudioCodec()).eval()
    shards = resolve_shards(str(tiny_shards))[:2]
    first = encode_latent_shards(codec, shards, tmp_path, seconds=1, shard_size=4, progress=False)
    (tmp_path / "shard-000001.tar").unlink()  # as if interrupted before the second shard was finished
    before = (tmp_path / "shard-000000.tar").stat().st_mtime_ns
    again = encode_latent_shards(codec, shards, tmp_path, seconds=1, shard_size=4, progress=False)
    assert again["samples"] == first["samples"] == 8 and (tmp_path / "shard-000001.tar").is_file()
    assert (tmp_path / "shard-000000.tar").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="other settings.*seconds: earlier 1, now 2"):
        encode_latent_shards(codec, shards, tmp_path, seconds=2, shard_size=4, progress=False)


def test_latents_of_another_codec_are_refused_with_the_difference(learned_latents):
    _, out, _ = learned_latents
    other_weights = tiny_learned_codec(seed=1)
    with pytest.raises(ValueError, match="another codec.*same class and init args, other weights"):
        latent_batches(out, WINDOW, other_weights)
    other_class = AVCodec(PatchVideoCodec(), MelAudioCodec()).eval()
    with pytest.raises(ValueError, match=r"codec\.init_args\.video\.class_path: shards .*CausalVideoAutoencoder"):
        latent_batches(out, WINDOW, other_class)


def test_clip_longer_than_the_windows_and_media_shards_are_refused(learned_latents, tiny_shards):
    codec, out, _ = learned_latents
    with pytest.raises(ValueError, match="windows of 1 s are shorter than the clip's 2 s"):
        check_latent_shards(resolve_shards(str(out)), ClipSpec(seconds=2), 3, codec, require_latents=True)
    with pytest.raises(ValueError, match="holds media shards, not latents"):
        check_latent_shards(resolve_shards(str(tiny_shards)), WINDOW, 3, codec, require_latents=True)
    check_latent_shards(resolve_shards(str(tiny_shards)), WINDOW, 3, codec, require_latents=False)


def test_media_of_another_frame_size_gives_no_window(tiny_shards, tmp_path):
    codec = AVCodec(PatchVideoCodec(size=16), MelAudioCodec()).eval()
    with pytest.raises(InvalidInputError, match="no window of 1 s.*frame size 32x32 != the codec's 16x16"):
        encode_latent_shards(codec, resolve_shards(str(tiny_shards)), tmp_path, seconds=1, progress=False)
