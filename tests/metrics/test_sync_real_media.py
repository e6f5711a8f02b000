"""The offset estimate on real clips (``../shared/media``): delaying the audio by k frames moves it by k frames.

Real speech and film audio correlate only weakly with global motion, so the absolute offset measured on
these clips is not meaningful (low confidence); what must hold is that a real delay of the audio shows up
as exactly that change of the estimate. The delay is made by cropping the audio later from the longer
original, so no artificial silence (and no artificial onset) enters the clip.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from omniforcing.metrics.onsets import onset_strength
from omniforcing.metrics.sync import SyncAnalyzer
from omniforcing.metrics.sync_metrics import AVSyncOffset

ANALYSIS_RATE = 16000
MARGIN_FRAMES = 10


def _decode(path: Path, width: int | None) -> tuple[torch.Tensor, float, np.ndarray]:
    """Video ``(1, T, 3, H, W)`` uint8, its fps, and mono float audio at 16 kHz (PyAV's resampler)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = []
        for frame in container.decode(stream):
            height = frame.height * width // frame.width if width else frame.height
            frames.append(frame.to_ndarray(format="rgb24", width=width or frame.width, height=height))
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=ANALYSIS_RATE)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                  for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None]
    return video, fps, np.concatenate(chunks)


@pytest.mark.parametrize(("name", "width"), [("webcam_talk.avi", None), ("bigbuckbunny.mp4", 320)])
def test_delaying_real_audio_by_k_frames_moves_the_offset_by_k_frames(shared_media: Path, name: str,
                                                                      width: int | None):
    video, fps, audio = _decode(shared_media / name, width)
    video = video[:, MARGIN_FRAMES:-MARGIN_FRAMES]
    length = round(video.shape[1] / fps * ANALYSIS_RATE)

    def audio_delayed_by(frames: int) -> torch.Tensor:
        start = round((MARGIN_FRAMES - frames) / fps * ANALYSIS_RATE)
        return torch.from_numpy(audio[start:start + length].copy())[None, None]

    base = SyncAnalyzer(max_side=160)(video, audio_delayed_by(0), fps, ANALYSIS_RATE)[0]
    offsets = {}
    for frames in (0, 1, 2, 3):
        # the video analysis is shared; only the audio onset envelope changes with the delay
        envelope = onset_strength(audio_delayed_by(frames)[:, 0], ANALYSIS_RATE)[0]
        metric = AVSyncOffset()
        metric.update([dataclasses.replace(base, onset_envelope=envelope)])
        offsets[frames] = float(metric.compute()["av_offset_ms"])
    for frames in (1, 2, 3):
        assert offsets[frames] - offsets[0] == pytest.approx(frames * 1000 / fps, abs=10.0), offsets
