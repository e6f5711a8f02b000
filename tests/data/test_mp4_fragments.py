"""The in-memory fragmented mp4 of live serving (``Mp4FragmentStream``): init segment, fragments, sync."""

from __future__ import annotations

import numpy as np
import pytest
from media_checks import lag_samples

from omniforcing.data.media import read_av
from omniforcing.data.mp4_writers import Mp4FragmentStream


def _clicks(num_samples: int, rate: int, times: list[float]) -> np.ndarray:
    audio = np.zeros(num_samples, np.float32)
    n = np.arange(400)
    for t in times:
        start = round(t * rate)
        audio[start : start + 400] += 0.8 * np.sin(2 * np.pi * 700 * n / rate) * np.exp(-n / 80)
    return audio


def _box_types(data: bytes) -> list[bytes]:
    types, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        assert size >= 8 and offset + size <= len(data), "a return holds only whole top-level boxes"
        types.append(data[offset + 4:offset + 8])
        offset += size
    return types


def test_blocks_come_out_as_init_segment_then_fragments_that_decode_in_sync():
    fps, rate, size, blocks = 24, 16000, 32, 3
    stream = Mp4FragmentStream(fps, rate)
    rng = np.random.default_rng(2)
    written, returns = [], []
    for block in range(blocks + 1):  # block 0 is the lead: one frame and one 40-ms audio latent
        frames = rng.integers(0, 255, (1 if block == 0 else fps, size, size, 3), dtype=np.uint8)
        audio = _clicks(rate // 25 if block == 0 else rate, rate, [] if block == 0 else [0.25, 0.6])
        returns.append(stream.write(frames, audio))
        written.append(audio)
    returns.append(stream.close())
    assert stream.close() == b""
    first = next(i for i, r in enumerate(returns) if r)
    assert first == 1  # the lead alone is shorter than a fragment; the init segment comes with block 1
    assert _box_types(returns[first])[:3] == [b"ftyp", b"moov", b"moof"]
    assert returns[first].startswith(stream.init_segment)
    for later in returns[first + 1:]:
        assert set(_box_types(later)) <= {b"moof", b"mdat"}
    # live: after block k almost all of it is out (what the AAC delay and the interleaver hold back follows)
    partial = read_av(b"".join(returns[:3]))
    assert partial.video.shape[0] >= 1 + 2 * fps - fps // 2
    decoded = read_av(b"".join(returns))
    audio = np.concatenate(written)
    assert decoded.video.shape[0] == 1 + blocks * fps
    assert len(audio) <= decoded.audio.shape[-1] < len(audio) + 1024  # AAC pads the last frame only
    assert abs(lag_samples(audio, decoded.audio[0].numpy())) <= rate // 1000


def test_mime_type_names_the_encoded_profile_and_level():
    stream = Mp4FragmentStream(24, 16000)
    assert stream.mime_type is None
    frames = np.zeros((24, 32, 32, 3), np.uint8)
    stream.write(frames[:1], np.zeros(640, np.float32))
    stream.write(frames, np.zeros(16000, np.float32))
    # x264 with yuv420p: High profile (0x64), no constraint flags, level 1.0 for 32x32 at 24 fps
    assert stream.mime_type == 'video/mp4; codecs="avc1.64000a, mp4a.40.2"'
    silent = Mp4FragmentStream(24, 0)
    silent.write(frames)
    silent.write(frames)
    assert silent.mime_type == 'video/mp4; codecs="avc1.64000a"'


def test_writing_after_close_is_an_error():
    stream = Mp4FragmentStream(24, 0)
    stream.write(np.zeros((2, 16, 16, 3), np.uint8))
    stream.close()
    with pytest.raises(RuntimeError, match="closed"):
        stream.write(np.zeros((2, 16, 16, 3), np.uint8))
