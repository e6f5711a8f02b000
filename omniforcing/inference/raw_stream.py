"""A simple binary framing for piping streamed blocks to another program (``omniforcing generate --raw -``).

All integers little-endian. The stream starts with one header::

    magic   4 bytes  b"OFRS"
    version u16      1
    fps     u16      video frame rate (0: no video)
    height  u16      frame height in pixels (0: no video)
    width   u16      frame width in pixels (0: no video)
    rate    u32      audio sample rate in Hz (0: no audio)
    format  u8       audio sample format: 0 none, 1 float32, 2 int16
    channels u8      audio channels (1)

then, per macro-block::

    magic   4 bytes  b"OFBK"
    index   u32      macro-block index (0 = the prefix)
    frames  u32      video frames in this block (T)
    samples u32      audio samples per channel in this block (S)
    video   T*H*W*3 bytes   rgb24, row-major, frame after frame
    audio   S*channels samples of the audio format (float32 in [-1, 1], or int16)

For example ``omniforcing generate ... --raw - | python my_player.py`` reads the header once and then blocks
until end of file; :func:`read_raw_stream` is the reference reader.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np
from torch import Tensor

STREAM_MAGIC, BLOCK_MAGIC, VERSION = b"OFRS", b"OFBK", 1
_HEADER = struct.Struct("<4sHHHHIBB")
_BLOCK = struct.Struct("<4sIII")
AudioFormat = Literal["f32", "s16"]
_FORMAT_CODES = {"f32": 1, "s16": 2}


@dataclass(frozen=True)
class RawStreamHeader:
    """Geometry of a raw stream (see the module docstring)."""

    fps: int
    height: int
    width: int
    sample_rate: int
    audio_format: AudioFormat | None
    channels: int = 1


@dataclass
class RawBlock:
    """One decoded block of a raw stream: ``video (T, H, W, 3)`` uint8 and ``audio (S,)`` float32 (or ``None``)."""

    index: int
    video: np.ndarray | None
    audio: np.ndarray | None


class RawStreamWriter:
    """Write the framing above to a binary file object (e.g. ``sys.stdout.buffer``).

    Args:
        out: binary, writable file object; flushed after every block.
        header: the stream's geometry.
    """

    def __init__(self, out: BinaryIO, header: RawStreamHeader) -> None:
        self.out, self.header = out, header
        code = 0 if header.audio_format is None else _FORMAT_CODES[header.audio_format]
        out.write(_HEADER.pack(STREAM_MAGIC, VERSION, header.fps, header.height, header.width, header.sample_rate,
                               code, header.channels))
        out.flush()

    def write(self, index: int, video: Tensor | None, audio: Tensor | None) -> None:
        """Append block ``index``: ``video (T, H, W, 3)`` uint8 and ``audio (S,)`` float in ``[-1, 1]``."""
        frames = np.zeros((0, self.header.height, self.header.width, 3), np.uint8) if video is None else \
            np.ascontiguousarray(video.cpu().numpy(), dtype=np.uint8)
        if frames.shape[1:] != (self.header.height, self.header.width, 3):
            raise ValueError(f"frames must be (T, {self.header.height}, {self.header.width}, 3), got {frames.shape}")
        samples = np.zeros(0, np.float32) if audio is None else audio.float().cpu().numpy()
        if self.header.audio_format == "s16":
            payload = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
        else:
            payload = samples.astype("<f4").tobytes() if self.header.audio_format else b""
        self.out.write(_BLOCK.pack(BLOCK_MAGIC, index, frames.shape[0], samples.shape[0] if payload else 0))
        self.out.write(frames.tobytes())
        self.out.write(payload)
        self.out.flush()


def _read_exact(source: BinaryIO, size: int) -> bytes:
    data = source.read(size)
    if len(data) != size:
        raise ValueError(f"raw stream truncated: wanted {size} bytes, got {len(data)}")
    return data


def read_raw_stream(source: BinaryIO) -> tuple[RawStreamHeader, Iterator[RawBlock]]:
    """Parse a raw stream: its header, and an iterator over its blocks (audio converted to float32).

    Raises:
        ValueError: the bytes are not this format, or the stream ends inside a block.
    """
    magic, version, fps, height, width, rate, code, channels = _HEADER.unpack(_read_exact(source, _HEADER.size))
    if magic != STREAM_MAGIC or version != VERSION:
        raise ValueError(f"not an omniforcing raw stream (magic {magic!r}, version {version})")
    audio_format = {1: "f32", 2: "s16"}.get(code)
    header = RawStreamHeader(fps, height, width, rate, audio_format, channels)

    def blocks() -> Iterator[RawBlock]:
        while head := source.read(_BLOCK.size):
            magic, index, frames, samples = _BLOCK.unpack(head if len(head) == _BLOCK.size else
                                                          head + _read_exact(source, _BLOCK.size - len(head)))
            if magic != BLOCK_MAGIC:
                raise ValueError(f"bad block magic {magic!r}")
            video = np.frombuffer(_read_exact(source, frames * height * width * 3), np.uint8)
            video = video.reshape(frames, height, width, 3) if frames else None
            audio = None
            if audio_format is not None and samples:
                dtype = "<f4" if audio_format == "f32" else "<i2"
                raw = np.frombuffer(_read_exact(source, samples * channels * np.dtype(dtype).itemsize), dtype)
                audio = raw.astype(np.float32) / (1.0 if audio_format == "f32" else 32767.0)
            yield RawBlock(index, video, audio)

    return header, blocks()
