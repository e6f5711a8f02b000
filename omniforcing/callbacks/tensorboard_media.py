"""Media summaries for TensorBoard without moviepy: animated GIFs, audio, mel-spectrogram images.

TensorBoard's ``add_video`` silently logs nothing without ``moviepy==1.0.3`` (ENVIRONMENT.md); encoding the GIF
with PIL and writing the image summary directly is also 3-7x faster.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torchaudio
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter


def encode_gif(frames: Tensor, fps: int) -> bytes:
    """``(T, H, W, 3)`` uint8 frames -> looping GIF bytes at ``fps``."""
    images = [Image.fromarray(f) for f in frames.cpu().numpy()]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0)
    return buffer.getvalue()


def log_gif(writer: SummaryWriter, tag: str, frames: Tensor, fps: int, step: int) -> None:
    """Write ``(T, H, W, 3)`` uint8 frames as an animated image summary."""
    image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3,
                          encoded_image_string=encode_gif(frames, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def mel_image(audio: Tensor, sample_rate: int, n_mels: int = 64) -> Tensor:
    """Log-mel spectrogram of ``(S,)`` audio as a ``(3, n_mels, frames)`` float image in ``[0, 1]`` (low at bottom)."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=512, hop_length=160, n_mels=n_mels)(
        audio.float().cpu())
    db = 10 * torch.log10(mel + 1e-8)
    db = (db - (db.max() - 80)).clamp(min=0) / 80
    rgb = _colormap(db.flip(0).numpy())
    return torch.from_numpy(rgb).permute(2, 0, 1)


def _colormap(x: np.ndarray) -> np.ndarray:
    """A small perceptual-ish colormap (black -> purple -> orange -> yellow) for spectrogram images."""
    anchors = np.array([[0, 0, 0], [0.35, 0.05, 0.5], [0.9, 0.35, 0.1], [1, 1, 0.6]], dtype=np.float32)
    pos = np.clip(x, 0, 1) * (len(anchors) - 1)
    low = np.floor(pos).astype(int).clip(0, len(anchors) - 2)
    frac = (pos - low)[..., None]
    return (anchors[low] * (1 - frac) + anchors[low + 1] * frac).astype(np.float32)


def log_clip(writer: SummaryWriter, tag: str, video: Tensor | None, audio: Tensor | None, fps: int,
             sample_rate: int, step: int) -> None:
    """Log one clip: ``video`` ``(T, H, W, 3)`` uint8 as a GIF, ``audio`` ``(S,)`` as sound and a mel image."""
    if video is not None:
        log_gif(writer, f"{tag}/video", video, fps, step)
    if audio is not None:
        writer.add_audio(f"{tag}/audio", audio.float().clamp(-1, 1).cpu()[None], step, sample_rate=sample_rate)
        writer.add_image(f"{tag}/mel", mel_image(audio, sample_rate), step)
