"""TensorBoard pictures of codec training: input beside reconstruction, and quality over time as a line plot.

No plotting library is a dependency (matplotlib is not installed), so the line plot is drawn with PIL, like
:mod:`omniforcing.callbacks.sync_plot`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from omniforcing.callbacks.tensorboard_media import log_gif, mel_image
from omniforcing.inference.clips import to_uint8_video

LINE_COLOUR = (70, 140, 255)
MARK_COLOUR = (90, 60, 60)
AXIS_COLOUR = (150, 150, 150)
BACKGROUND = (20, 20, 26)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 52, 12, 24, 26


def line_plot(values: Tensor, title: str, x_label: str, marks_every: int | None = None, mark_offset: int = 0,
              width: int = 480, height: int = 220) -> Tensor:
    """Draw ``values[i]`` against ``i`` as a polyline with the y range labelled.

    Args:
        values: ``(N,)`` finite values, one per step of the x axis.
        title: text in the top-left corner (say what is plotted and its unit).
        x_label: name of the x axis unit (written at its right end).
        marks_every: draw a faint vertical line every this many steps (e.g. latent boundaries), or ``None``.
        mark_offset: x position of the first mark.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        ``(3, height, width)`` float32 image in ``[0, 1]`` (the layout of ``SummaryWriter.add_image``).
    """
    data = values.detach().double().cpu().numpy()
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM
    low, high = float(data.min()), float(data.max())
    if high - low < 1e-9:  # a flat line still needs a range to be drawn in
        low, high = low - 0.5, high + 0.5
    span = max(len(data) - 1, 1)
    if marks_every:
        for x in range(mark_offset, len(data), marks_every):
            px = left + (right - left) * x / span
            draw.line([(px, top), (px, bottom)], fill=MARK_COLOUR)
    draw.rectangle((left, top, right, bottom), outline=AXIS_COLOUR)
    xs = left + (right - left) * np.arange(len(data)) / span
    ys = bottom - (bottom - top) * (data - low) / (high - low)
    if len(data) > 1:
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=LINE_COLOUR, width=2)
    else:
        draw.ellipse((xs[0] - 2, ys[0] - 2, xs[0] + 2, ys[0] + 2), fill=LINE_COLOUR)
    draw.text((4, top - 4), f"{high:.4g}", fill=AXIS_COLOUR, font=font)
    draw.text((4, bottom - 8), f"{low:.4g}", fill=AXIS_COLOUR, font=font)
    draw.text((left, bottom + 6), "0", fill=AXIS_COLOUR, font=font)
    draw.text((right - 70, bottom + 6), f"{len(data) - 1} {x_label}", fill=AXIS_COLOUR, font=font)
    draw.text((4, 4), title, fill=LINE_COLOUR, font=font)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def log_video_reconstruction(writer: SummaryWriter, tag: str, video: Tensor, recon: Tensor, fps: int,
                             step: int) -> None:
    """Log one clip as a GIF with the input on the left and its reconstruction on the right.

    Args:
        writer: the TensorBoard writer.
        tag: summary tag.
        video: input ``(T, 3, H, W)`` in ``[-1, 1]``.
        recon: reconstruction, same shape.
        fps: frame rate of the GIF.
        step: global step.
    """
    frames = to_uint8_video(torch.stack([video, recon]))  # (2, T, H, W, 3)
    log_gif(writer, tag, torch.cat([frames[0], frames[1]], dim=2), fps, step)


def log_audio_reconstruction(writer: SummaryWriter, tag: str, audio: Tensor, recon: Tensor, sample_rate: int,
                             step: int) -> None:
    """Log both waveforms as sound and their mel spectrograms side by side (input left) as one image.

    Args:
        writer: the TensorBoard writer.
        tag: summary tag prefix.
        audio: input ``(S,)`` in ``[-1, 1]``.
        recon: reconstruction ``(S,)``.
        sample_rate: audio sample rate in Hz.
        step: global step.
    """
    for name, wave in (("input", audio), ("reconstruction", recon)):
        writer.add_audio(f"{tag}/{name}", wave.float().clamp(-1, 1).cpu()[None], step, sample_rate=sample_rate)
    left, right = mel_image(audio, sample_rate), mel_image(recon, sample_rate)
    image = torch.cat([left, torch.ones(3, left.shape[1], 2), right], dim=2)  # a white line between the two
    writer.add_image(f"{tag}/mel_input_vs_reconstruction", image, step)
