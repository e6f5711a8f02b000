"""Saving and loading codecs: round trips, recipe-style loading, clear errors for wrong files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from omniforcing.codecs import (
    AVCodec,
    CausalVideoAutoencoder,
    MelAudioCodec,
    MelAutoencoder,
    PatchVideoCodec,
    load_codec,
    save_codec,
)

TINY_VIDEO = {"widths": (8, 8, 8), "group_width": 16, "latent_channels": 4}
TINY_AUDIO = {"latent_channels": 8, "hidden_channels": 16, "mel": MelAudioCodec(griffin_lim_iters=2)}


def perturbed(codec: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter and the normalisation buffers non-default values."""
    with torch.no_grad():
        for p in codec.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for module in codec.modules():
            if hasattr(module, "num_vectors"):
                module.mean.normal_()
                module.std.uniform_(0.5, 2.0)
                module.num_vectors.fill_(10)
    return codec.eval()


def test_video_autoencoder_round_trip_through_checkpoint_argument(tmp_path, clips):
    codec = perturbed(CausalVideoAutoencoder(**TINY_VIDEO))
    path = save_codec(codec, tmp_path / "video.safetensors")
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["class_path"] == "omniforcing.codecs.video_autoencoder.CausalVideoAutoencoder"
    assert record["init_args"]["widths"] == [8, 8, 8] and "checkpoint" not in record["init_args"]
    loaded = CausalVideoAutoencoder(**TINY_VIDEO, checkpoint=str(path)).eval()
    assert loaded.normalizer.is_fitted
    torch.testing.assert_close(loaded.encode(clips.video), codec.encode(clips.video))
    torch.testing.assert_close(load_codec(path).encode(clips.video), codec.encode(clips.video))


def test_audio_codecs_and_av_codec_round_trip(tmp_path, clips):
    audio_codec = perturbed(MelAutoencoder(**TINY_AUDIO))
    av = AVCodec(video=perturbed(PatchVideoCodec()), audio=audio_codec)
    path = save_codec(av, tmp_path / "av.safetensors")
    loaded = load_codec(path)
    assert isinstance(loaded, AVCodec) and isinstance(loaded.audio, MelAutoencoder)
    assert loaded.audio.mel.griffin_lim_iters == 2
    torch.testing.assert_close(loaded.audio.encode(clips.audio), audio_codec.encode(clips.audio))
    torch.testing.assert_close(loaded.video.encode(clips.video), av.video.encode(clips.video))
    mel = perturbed(MelAudioCodec())
    mel_path = save_codec(mel, tmp_path / "mel.safetensors")
    torch.testing.assert_close(MelAudioCodec(checkpoint=str(mel_path)).normalizer.std, mel.normalizer.std)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        CausalVideoAutoencoder(**TINY_VIDEO, checkpoint=str(tmp_path / "nowhere.safetensors"))


def test_file_that_is_not_weights_gives_clear_error(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("this is not a weights file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        PatchVideoCodec(checkpoint=str(bad))
    bad_torch = tmp_path / "notes.pt"
    bad_torch.write_text("nor is this")
    with pytest.raises(ValueError, match="neither safetensors nor a torch weights file"):
        PatchVideoCodec(checkpoint=str(bad_torch))


def test_wrong_codec_weights_name_missing_and_unexpected_keys(tmp_path):
    path = save_codec(PatchVideoCodec(), tmp_path / "patch.safetensors")
    path.with_suffix(".json").unlink()  # without the record only the tensors can be compared
    with pytest.raises(ValueError, match=r"missing keys \['frame_decoder\.net\.0\.conv1\.bias'.*unexpected keys \[\]"):
        CausalVideoAutoencoder(**TINY_VIDEO, checkpoint=str(path))


def test_record_mismatch_names_class_and_arguments(tmp_path):
    path = save_codec(CausalVideoAutoencoder(**TINY_VIDEO), tmp_path / "video.safetensors")
    with pytest.raises(ValueError, match="latent_channels: saved 4, built 16"):
        CausalVideoAutoencoder(widths=(8, 8, 8), group_width=16, checkpoint=str(path))
    with pytest.raises(ValueError, match="was saved from omniforcing.codecs.video_autoencoder"):
        PatchVideoCodec(checkpoint=str(path))


def test_shape_mismatch_is_named(tmp_path):
    path = save_codec(CausalVideoAutoencoder(**TINY_VIDEO), tmp_path / "video.safetensors")
    path.with_suffix(".json").unlink()
    with pytest.raises(ValueError, match="shape mismatches.*normalizer.mean: file \\(4,\\) vs codec \\(16,\\)"):
        CausalVideoAutoencoder(widths=(8, 8, 8), group_width=16, checkpoint=str(path))


def test_torch_state_dict_files_load_with_weights_only(tmp_path, clips):
    codec = perturbed(CausalVideoAutoencoder(**TINY_VIDEO))
    torch.save({"state_dict": codec.state_dict()}, tmp_path / "video.ckpt")
    loaded = CausalVideoAutoencoder(**TINY_VIDEO, checkpoint=str(tmp_path / "video.ckpt")).eval()
    torch.testing.assert_close(loaded.encode(clips.video), codec.encode(clips.video))


def test_save_requires_safetensors_suffix(tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        save_codec(PatchVideoCodec(), tmp_path / "patch.pt")


def test_recipe_style_class_path_loading(tmp_path):
    from jsonargparse import ArgumentParser

    path = save_codec(perturbed(CausalVideoAutoencoder(**TINY_VIDEO)), tmp_path / "video.safetensors")
    parser = ArgumentParser()
    parser.add_argument("--codec", type=AVCodec)
    config = parser.parse_object({"codec": {"class_path": "omniforcing.codecs.AVCodec", "init_args": {
        "video": {"class_path": "omniforcing.codecs.CausalVideoAutoencoder",
                  "init_args": {"checkpoint": str(path), "widths": [8, 8, 8], "group_width": 16,
                                "latent_channels": 4}},
        "audio": {"class_path": "omniforcing.codecs.MelAudioCodec"}}}})
    codec = parser.instantiate(config).codec
    assert isinstance(codec, AVCodec) and codec.video.normalizer.is_fitted
    assert codec.video.latent_channels == 4 and codec.audio.latent_channels == 256


def test_relative_codec_paths_fall_back_to_the_repository_root(tmp_path, monkeypatch):
    from omniforcing.codecs.checkpoint import REPOSITORY_ROOT, resolve_codec_path

    shipped = "checkpoints/reference/codec/mel.safetensors"
    monkeypatch.chdir(tmp_path)
    assert resolve_codec_path(shipped) == REPOSITORY_ROOT / shipped
    (tmp_path / "local.safetensors").write_bytes(b"")
    assert resolve_codec_path("local.safetensors") == Path("local.safetensors")  # the working directory wins
    assert resolve_codec_path("nowhere.safetensors") == Path("nowhere.safetensors")  # left for a clear error
