"""Media I/O with PyAV: read any common container, convert rates and sizes.

Writing mp4 (whole clips, progressive files, fragments) is in :mod:`omniforcing.data.mp4_writers`.

torchvision 0.26 has no video I/O, so everything goes through PyAV (which bundles FFmpeg with libx264 and
the native AAC encoder). Conventions used by every function here:

* video: ``(T, H, W, 3)`` ``torch.uint8`` RGB, with per-frame presentation times in seconds;
* audio: ``(C, S)`` ``torch.float32`` in ``[-1, 1]``, with its sample rate and the time of sample 0.

Two FFmpeg details matter for audio-video sync and are handled here, not by callers:

* the AAC encoder prepends 1024 "priming" samples; a plain mp4 carries an edit list that the demuxer uses
  to drop them, and the decoder pads the last frame to 1024 samples, so the reader crops the decoded
  audio to the stream's declared duration (exact for the files written by
  :func:`~omniforcing.data.mp4_writers.encode_mp4`);
* the progressive writer (:class:`~omniforcing.data.mp4_writers.StreamingMp4Writer`) must use ``delay_moov``
  (details there).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from av.video.reformatter import VideoReformatter
from torch import Tensor

MEDIA_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
"""File name endings that :func:`read_av` is expected to open (anything FFmpeg reads works)."""


class MediaError(Exception):
    """A media file or byte string could not be read as video (and audio)."""


class NoAudioStreamError(MediaError):
    """The container has no audio stream although audio was requested; callers usually skip the file."""


class NoVideoStreamError(MediaError):
    """The container has no video stream."""


@dataclass
class MediaClip:
    """Decoded media with its timing.

    Args:
        video: ``(T, H, W, 3)`` uint8 RGB frames.
        frame_times: ``(T,)`` float64 presentation time of each frame in seconds.
        fps: the container's average frame rate (used for the duration of the last frame).
        audio: ``(C, S)`` float32 in ``[-1, 1]``, or ``None`` when audio was not requested.
        sample_rate: audio sample rate in Hz (0 without audio).
        audio_start: presentation time of audio sample 0 in seconds.
    """

    video: Tensor
    frame_times: Tensor
    fps: float
    audio: Tensor | None = None
    sample_rate: int = 0
    audio_start: float = 0.0

    @property
    def video_start(self) -> float:
        """Time of the first frame in seconds."""
        return float(self.frame_times[0]) if len(self.frame_times) else 0.0

    @property
    def video_end(self) -> float:
        """End of the last frame (its time plus one frame period) in seconds."""
        return float(self.frame_times[-1]) + 1.0 / self.fps if len(self.frame_times) else 0.0

    @property
    def audio_end(self) -> float:
        """End of the last audio sample in seconds."""
        if self.audio is None:
            return self.audio_start
        return self.audio_start + self.audio.shape[-1] / self.sample_rate


def _open(source: str | Path | bytes) -> av.container.InputContainer:
    target = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    return av.open(target, mode="r")


def _scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Output (width, height) with the shorter side scaled to ``short_side`` (never upscaled)."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


def _audio_frame_to_array(frame: av.AudioFrame) -> np.ndarray:
    """``(C, n)`` float32 from a frame already converted to planar float (``fltp``)."""
    return frame.to_ndarray().reshape(len(frame.layout.channels), -1).astype(np.float32, copy=False)


def _stream_duration(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def read_av(source: str | Path | bytes, *, with_audio: bool = True, short_side: int | None = None) -> MediaClip:
    """Decode a media file or in-memory container.

    Args:
        source: a path (mp4, mov, mkv, webm, avi, ... anything FFmpeg demuxes) or the file's bytes.
        with_audio: decode the first audio stream; raise :class:`NoAudioStreamError` if there is none.
        short_side: if set, frames are scaled while decoding (area filter) so that the shorter side is at
            most this many pixels; bounds memory for large videos before :func:`resize_center_crop`.

    Returns:
        The decoded :class:`MediaClip` (audio channels and rate as stored).

    Raises:
        NoVideoStreamError: the container has no video stream.
        NoAudioStreamError: ``with_audio`` and the container has no audio stream.
        MediaError: the data is not a readable container, or no frame could be decoded.
    """
    try:
        with _open(source) as container:
            return _decode_container(container, with_audio, short_side)
    except av.error.FFmpegError as error:
        raise MediaError(f"cannot decode media: {error}") from error


def _decode_container(container: av.container.InputContainer, with_audio: bool, short_side: int | None) -> MediaClip:
    if not container.streams.video:
        raise NoVideoStreamError("container has no video stream")
    vstream = container.streams.video[0]
    astream = container.streams.audio[0] if container.streams.audio else None
    if with_audio and astream is None:
        raise NoAudioStreamError("container has no audio stream")
    streams = [vstream] + ([astream] if with_audio else [])
    reformatter = VideoReformatter()  # one reformatter for all frames: ~5x faster than per-frame to_ndarray
    resampler = av.AudioResampler(format="fltp") if with_audio else None
    frames: list[np.ndarray] = []
    times: list[float] = []
    chunks: list[np.ndarray] = []
    audio_start: float | None = None
    size: tuple[int, int] | None = None
    for packet in container.demux(*streams):
        for frame in packet.decode():
            if isinstance(frame, av.VideoFrame):
                size = size or _scaled_size(frame.width, frame.height, short_side)
                rgb = reformatter.reformat(frame, width=size[0], height=size[1], format="rgb24", interpolation="AREA")
                frames.append(rgb.to_ndarray())
                times.append(float(frame.time) if frame.time is not None else float("nan"))
            elif resampler is not None:
                if audio_start is None:
                    audio_start = float(frame.time) if frame.time is not None else 0.0
                chunks += [_audio_frame_to_array(f) for f in resampler.resample(frame)]
    if not frames:
        raise MediaError("no video frame could be decoded")
    fps = float(vstream.average_rate or vstream.guessed_rate or 0.0) or _fps_from_times(times)
    clip = MediaClip(torch.from_numpy(np.stack(frames)), _fill_times(times, fps), fps)
    if with_audio:
        clip.audio, clip.sample_rate, clip.audio_start = _finish_audio(chunks, astream, audio_start)
    return clip


def _finish_audio(chunks: list[np.ndarray], stream: av.stream.Stream, start: float | None) -> tuple[Tensor, int, float]:
    if not chunks:
        raise MediaError("the audio stream holds no decodable samples")
    audio = np.concatenate(chunks, axis=1)
    rate = int(stream.codec_context.sample_rate)
    duration = _stream_duration(stream)
    if duration is not None:
        # The decoder pads the last AAC frame to 1024 samples; the stream duration is the true length.
        audio = audio[:, : max(1, round(duration * rate))]
    return torch.from_numpy(np.ascontiguousarray(audio)), rate, start or 0.0


def _fps_from_times(times: list[float]) -> float:
    diffs = np.diff([t for t in times if t == t])
    return float(1.0 / np.median(diffs)) if len(diffs) and np.median(diffs) > 0 else 25.0


def _fill_times(times: list[float], fps: float) -> Tensor:
    """Frame times as float64; frames without a timestamp get index / fps."""
    out = np.asarray(times, dtype=np.float64)
    missing = np.isnan(out)
    out[missing] = np.nonzero(missing)[0] / fps
    return torch.from_numpy(out)


def to_mono(audio: Tensor) -> Tensor:
    """Average the channels: ``(C, S)`` -> ``(1, S)`` float32."""
    return audio.float().mean(dim=0, keepdim=True)


def resample_audio(audio: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Resample ``(C, S)`` audio with torchaudio's windowed-sinc resampler (identity when rates match)."""
    if orig_rate == new_rate:
        return audio
    return AF.resample(audio.float(), int(orig_rate), int(new_rate))


def frame_indices_at(frame_times: Tensor, times: Tensor) -> Tensor:
    """Index of the frame whose timestamp is nearest to each requested time (ties go to the earlier frame).

    Args:
        frame_times: ``(T,)`` increasing frame times in seconds.
        times: ``(N,)`` requested times in seconds.

    Returns:
        ``(N,)`` int64 indices into ``frame_times``.
    """
    frame_times = frame_times.double()
    right = torch.searchsorted(frame_times, times.double()).clamp(1, len(frame_times) - 1)
    left = right - 1
    take_right = (frame_times[right] - times) < (times - frame_times[left])
    index = torch.where(take_right, right, left)
    return index.clamp(0, len(frame_times) - 1) if len(frame_times) > 1 else torch.zeros_like(index)


def retime_video(video: Tensor, frame_times: Tensor, fps: float, start: float, num_frames: int) -> Tensor:
    """Resample video to a constant frame rate by timestamps.

    Output frame ``i`` is the source frame nearest to ``t_i = start + i / fps``; every ``t_i`` is computed
    from its index (not by accumulating ``1 / fps``), so long files do not drift.

    Args:
        video: ``(T, H, W, 3)`` uint8.
        frame_times: ``(T,)`` frame times in seconds.
        fps: target frame rate.
        start: time of output frame 0 in seconds.
        num_frames: number of output frames.

    Returns:
        ``(num_frames, H, W, 3)`` uint8.
    """
    times = start + torch.arange(num_frames, dtype=torch.float64) / fps
    return video[frame_indices_at(frame_times, times)]


def resize_center_crop(video: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Scale the frames to just cover ``size`` (antialiased bilinear, aspect kept) and crop the centre.

    Args:
        video: ``(T, H, W, 3)`` uint8.
        size: output side in pixels (square), or ``(height, width)``.

    Returns:
        ``(T, height, width, 3)`` uint8.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    _, height, width, _ = video.shape
    scale = max(out_h / height, out_w / width)
    new_h, new_w = max(out_h, round(height * scale)), max(out_w, round(width * scale))
    if (new_h, new_w) != (height, width):
        x = video.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        video = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return video[:, top : top + out_h, left : left + out_w].contiguous()
