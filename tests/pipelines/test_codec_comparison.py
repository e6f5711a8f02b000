"""Contact sheets of the codec comparison: geometry and content of the tiling."""

from __future__ import annotations

import numpy as np
import torch

from omniforcing.pipelines.codec_comparison import contact_sheet, slug


def test_contact_sheet_tiles_every_strided_frame_row_by_row():
    clips = [torch.full((13, 4, 5, 3), value, dtype=torch.uint8) for value in (10, 200)]
    clips[1][6] = 77  # the middle column of the second row
    sheet = np.asarray(contact_sheet(clips, frame_stride=6, scale=2))
    assert sheet.shape == (2 * 4 * 2, 3 * 5 * 2, 3)  # 2 rows of 4 px, frames 0, 6, 12 of 5 px, upscaled x2
    assert (sheet[:8] == 10).all() and (sheet[8:, :10] == 200).all()
    assert (sheet[8:, 10:20] == 77).all() and (sheet[8:, 20:] == 200).all()


def test_slug_makes_file_names():
    assert slug("Learned codec (16 ch)") == "learned_codec_16_ch"
