"""``PromptBank``: precomputed prompt features looked up by caption, padded per batch, the unconditional row for
dropped captions, one-line errors, and use as the text encoder of ``LTX2Backbone``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omniforcing.errors import InvalidInputError, MissingInputError
from omniforcing.models.ltx2 import PromptEncoder
from omniforcing.models.ltx2.prompt_bank import (
    BANK_NAME,
    PromptBank,
    PromptFeatures,
    prompt_member_bytes,
    read_prompt_member,
    save_prompt_bank,
)

WIDTH, AUDIO_WIDTH = 16, 12
LENGTHS = {"": 1, "a dog barks": 3, "rain on a tin roof at night": 7}


def random_features(seed: int = 0) -> dict[str, PromptFeatures]:
    """Caption -> features of different lengths, already bfloat16 values (what the bank stores, exactly)."""
    gen = torch.Generator().manual_seed(seed)
    return {caption: PromptFeatures(torch.randn(n, WIDTH, generator=gen).bfloat16(),
                                    torch.randn(n, AUDIO_WIDTH, generator=gen).bfloat16())
            for caption, n in LENGTHS.items()}


@pytest.fixture
def bank_file(tmp_path: Path) -> tuple[Path, dict[str, PromptFeatures]]:
    features = random_features()
    path = tmp_path / "bank.safetensors"
    save_prompt_bank(path, features, {"kind": "test"})
    return path, features


def test_a_batch_is_padded_to_its_longest_caption_with_the_mask_false(bank_file):
    path, features = bank_file
    bank = PromptBank(path)
    assert isinstance(bank, PromptEncoder) and (bank.width, bank.audio_width) == (WIDTH, AUDIO_WIDTH)
    captions = ["a dog barks", "rain on a tin roof at night", "a dog barks"]
    text = bank(captions)
    assert text.video.tokens.shape == (3, 7, WIDTH) and text.audio.tokens.shape == (3, 7, AUDIO_WIDTH)
    assert text.video.mask.tolist() == [[True] * 3 + [False] * 4, [True] * 7, [True] * 3 + [False] * 4]
    assert torch.equal(text.audio.mask, text.video.mask)
    for row, caption in enumerate(captions):
        n = LENGTHS[caption]
        assert torch.equal(text.video.tokens[row, :n], features[caption].video.float())
        assert torch.equal(text.audio.tokens[row, :n], features[caption].audio.float())
        assert not text.video.tokens[row, n:].any() and not text.audio.tokens[row, n:].any()


def test_dropped_rows_get_the_unconditional_prompt(bank_file):
    path, features = bank_file
    text = PromptBank(path)(["a dog barks", "rain on a tin roof at night"], drop=torch.tensor([True, False]))
    assert text.video.mask[0].tolist() == [True] + [False] * 6
    assert torch.equal(text.video.tokens[0, :1], features[""].video.float())
    assert torch.equal(text.video.tokens[1], features["rain on a tin roof at night"].video.float())


def test_features_follow_the_modules_dtype_and_are_no_state(bank_file):
    path, features = bank_file
    bank = PromptBank(path).to(torch.bfloat16)
    text = bank(["a dog barks"])
    assert text.video.tokens.dtype == torch.bfloat16
    assert torch.equal(text.video.tokens[0], features["a dog barks"].video)  # bfloat16 storage: no rounding
    assert bank.state_dict() == {} and not list(bank.parameters())  # a checkpoint holds the path only
    assert torch.equal(copy.deepcopy(bank)(["a dog barks"]).audio.tokens, text.audio.tokens)


def test_a_member_round_trips_with_its_caption():
    features = random_features()["a dog barks"]
    caption, read = read_prompt_member(prompt_member_bytes("a dog barks", features))
    assert caption == "a dog barks" and torch.equal(read.video, features.video) and read.audio.dtype == torch.bfloat16


def test_the_bank_is_a_valid_safetensors_file(bank_file):
    path, features = bank_file
    tensors = load_file(str(path))  # safetensors' own reader checks the header and the data layout
    assert len(tensors) == 2 * len(features)
    for index, caption in enumerate(features):
        assert torch.equal(tensors[f"video.{index}"], features[caption].video)
        assert torch.equal(tensors[f"audio.{index}"], features[caption].audio)


def test_folder_reads_its_bank_file(bank_file, tmp_path):
    path, features = bank_file
    (tmp_path / "latents").mkdir()
    path.rename(tmp_path / "latents" / BANK_NAME)
    bank = PromptBank(tmp_path / "latents")
    assert sorted(bank.captions) == sorted(LENGTHS)
    assert torch.equal(bank([""]).video.tokens[0], features[""].video.float())


def test_errors_are_one_line_and_name_the_command(bank_file, tmp_path):
    path, _ = bank_file
    with pytest.raises(MissingInputError, match=r"caption 'a cat' is not in the prompt bank .*omniforcing data "
                                                r"encode --text-encoder PATH") as missing:
        PromptBank(path)(["a dog barks", "a cat"])
    with pytest.raises(MissingInputError, match="nowhere: no such prompt bank or latent-shard folder; write one "
                                                "with `omniforcing data encode --text-encoder") as nowhere:
        PromptBank(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="no prompt features at .*omniforcing data encode --text-encoder") \
            as empty:
        PromptBank(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("not a bank")
    with pytest.raises(InvalidInputError, match="is not a prompt bank") as text_file:
        PromptBank(tmp_path / "notes.txt")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InvalidInputError, match="is not a prompt bank") as other:
        PromptBank(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="unconditional"):
        save_prompt_bank(tmp_path / "x.safetensors", {"a": random_features()["a dog barks"]}, {})
    assert all("\n" not in str(error.value) for error in (missing, nowhere, empty, text_file, other))


def test_ltx2_backbone_takes_its_captions_from_the_bank(make_backbone, make_clip, tmp_path):
    captions = ["a red ball bounces", "two cubes collide"]  # those of make_clip
    gen = torch.Generator().manual_seed(0)
    features = {caption: PromptFeatures(torch.randn(n, WIDTH, generator=gen).bfloat16(),
                                        torch.randn(n, WIDTH, generator=gen).bfloat16())  # LTX-2: both 16 wide
                for caption, n in zip(["", *captions], [1, 4, 6], strict=True)}
    save_prompt_bank(tmp_path / BANK_NAME, features, {"kind": "test"})
    model = make_backbone(text_encoder=PromptBank(tmp_path))
    text = model.encode_text(captions)
    assert torch.equal(text.video.tokens[1], features[captions[1]].video.float())
    clip = make_clip(model)
    with torch.no_grad():
        video, audio = model(clip.video, clip.audio, clip.t_video, clip.t_audio, text)
        other_video, _ = model(clip.video, clip.audio, clip.t_video, clip.t_audio, model.encode_text(captions[::-1]))
    assert torch.isfinite(video).all() and torch.isfinite(audio).all()
    assert not torch.allclose(video, other_video)  # the captions condition the output
    with pytest.raises(ValueError, match="caption projections take"):
        save_prompt_bank(tmp_path / "narrow.safetensors", {c: PromptFeatures(f.video[:, :8], f.audio[:, :8])
                                                            for c, f in features.items()}, {})
        make_backbone(text_encoder=PromptBank(tmp_path / "narrow.safetensors"))
