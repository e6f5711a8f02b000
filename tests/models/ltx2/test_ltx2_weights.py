"""LTX-2 weights from a local folder: a save_pretrained round trip gives the same outputs; a missing folder is a
one-line error naming what to download and where to put it."""

from __future__ import annotations

import pytest
import torch

from omniforcing.errors import UserError


@torch.no_grad()
def test_save_pretrained_folder_loads_through_pretrained(make_backbone, make_clip, tmp_path):
    model = make_backbone()
    model.transformer.save_pretrained(tmp_path / "transformer")
    loaded = make_backbone(architecture=None, pretrained=tmp_path, text_encoder=model.text_encoder)
    clip = make_clip(model, seconds=1)
    args = (clip.video, clip.audio, clip.t_video, clip.t_audio, clip.text)
    for got, want in zip(loaded(*args), model(*args)):
        assert torch.equal(got, want)
    assert make_backbone(architecture=None, pretrained=tmp_path, dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("what", ["folder", "weights"])
def test_missing_weights_are_a_one_line_user_error(make_backbone, tmp_path, what):
    if what == "weights":  # config.json present, no weights file
        make_backbone().transformer.save_config(tmp_path / "transformer")
    with pytest.raises(UserError) as error:
        make_backbone(architecture=None, pretrained=tmp_path / ("nowhere" if what == "folder" else ""))
    message = str(error.value)
    assert "\n" not in message and "Lightricks/LTX-2" in message and "transformer/" in message


def test_pretrained_and_architecture_are_exclusive(make_backbone, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        make_backbone(pretrained=tmp_path)
    with pytest.raises(ValueError, match="pretrained"):
        make_backbone(architecture=None)
