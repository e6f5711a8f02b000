"""The raw block framing round-trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from omniforcing.inference.raw_stream import RawStreamHeader, RawStreamWriter, read_raw_stream


@pytest.mark.parametrize("audio_format", ["f32", "s16"])
def test_raw_stream_round_trip(audio_format):
    buffer = io.BytesIO()
    writer = RawStreamWriter(buffer, RawStreamHeader(24, 8, 6, 16000, audio_format))
    blocks = [(torch.randint(0, 256, (n, 8, 6, 3), dtype=torch.uint8), torch.rand(s) * 2 - 1)
              for n, s in ((1, 640), (24, 16000))]
    for index, (video, audio) in enumerate(blocks):
        writer.write(index, video, audio)
    header, parsed = read_raw_stream(io.BytesIO(buffer.getvalue()))
    assert header == RawStreamHeader(24, 8, 6, 16000, audio_format)
    parsed = list(parsed)
    assert [b.index for b in parsed] == [0, 1]
    for (video, audio), block in zip(blocks, parsed):
        assert np.array_equal(block.video, video.numpy())
        np.testing.assert_allclose(block.audio, audio.numpy(), atol=0 if audio_format == "f32" else 1 / 32767)


def test_truncated_or_foreign_streams_are_rejected():
    buffer = io.BytesIO()
    RawStreamWriter(buffer, RawStreamHeader(24, 2, 2, 0, None)).write(0, torch.zeros(2, 2, 2, 3, dtype=torch.uint8),
                                                                      None)
    _, blocks = read_raw_stream(io.BytesIO(buffer.getvalue()[:-4]))
    with pytest.raises(ValueError, match="truncated"):
        list(blocks)
    with pytest.raises(ValueError, match="not an omniforcing raw stream"):
        read_raw_stream(io.BytesIO(b"RIFF" + bytes(16)))
    with pytest.raises(ValueError, match="frames must be"):
        RawStreamWriter(io.BytesIO(), RawStreamHeader(24, 2, 2, 0, None)).write(
            0, torch.zeros(1, 3, 3, 3, dtype=torch.uint8), None)
