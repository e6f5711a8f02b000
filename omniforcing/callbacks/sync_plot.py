"""A picture of one clip's synchronisation: audio onsets against visual motion peaks, drawn with PIL.

No plotting library is a dependency; the figure is simple enough to draw directly. Two panels share one
time axis: the top shows the visual motion trajectory (mean optical-flow magnitude per frame, AV-Align's
signal) with its peaks and the detected visual impacts, the bottom the audio onset envelope with the
detected onsets. Every audio onset is also drawn as a faint line through the top panel, so a sound that
lands on a motion peak or impact is visible at a glance, and so is a constant offset.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from omniforcing.metrics.sync import ClipSignals

MOTION_COLOUR = (70, 140, 255)
IMPACT_COLOUR = (120, 220, 255)
ONSET_COLOUR = (255, 150, 40)
AXIS_COLOUR = (150, 150, 150)
BACKGROUND = (20, 20, 26)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, GAP, MARGIN_BOTTOM = 48, 12, 22, 26, 24


Box = tuple[int, int, int, int]
"""A panel's (left, top, right, bottom) in pixels."""


def _panel_points(values: Tensor, rate: float, box: Box, duration: float) -> list[tuple[float, float]]:
    """Polyline of a 1-D signal sampled at ``rate`` Hz inside ``box`` (left, top, right, bottom), scaled to its max."""
    left, top, right, bottom = box
    values = values.double().cpu().numpy()
    scale = values.max() if values.size and values.max() > 0 else 1.0
    times = np.arange(values.size) / rate
    xs = left + (right - left) * times / duration
    ys = bottom - (bottom - top) * values / scale
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def _x_of(time: float, box: Box, duration: float) -> float:
    return box[0] + (box[2] - box[0]) * time / duration


def _axis(draw: ImageDraw.ImageDraw, box: Box, duration: float,
          font: ImageFont.ImageFont, labels: bool) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline=AXIS_COLOUR)
    step = 0.25 if duration <= 2 else (0.5 if duration <= 5 else 1.0)
    for k in range(int(duration / step) + 1):
        x = _x_of(k * step, box, duration)
        draw.line([(x, bottom), (x, bottom + 3)], fill=AXIS_COLOUR)
        if labels and (k * step) % max(step, 0.5) < 1e-9:
            draw.text((x - 8, bottom + 5), f"{k * step:g}s", fill=AXIS_COLOUR, font=font)


def sync_plot(signals: ClipSignals, width: int = 640, height: int = 300) -> Tensor:
    """Draw audio onsets against visual motion peaks for one clip.

    Args:
        signals: the clip's :class:`~omniforcing.metrics.sync.ClipSignals` (from ``SyncAnalyzer``).
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        ``(3, height, width)`` float32 image in ``[0, 1]`` (the layout of ``SummaryWriter.add_image``).
    """
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    duration = max(len(signals.motion) / signals.fps, len(signals.onset_envelope) / signals.envelope_rate, 1e-3)
    panel = (height - MARGIN_TOP - GAP - MARGIN_BOTTOM) // 2
    top_box = (MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, MARGIN_TOP + panel)
    bottom_box = (MARGIN_LEFT, MARGIN_TOP + panel + GAP, width - MARGIN_RIGHT, MARGIN_TOP + 2 * panel + GAP)
    _axis(draw, top_box, duration, font, labels=False)
    _axis(draw, bottom_box, duration, font, labels=True)
    for onset in signals.onset_times.tolist():  # onsets through both panels, faint above
        x = _x_of(onset, top_box, duration)
        draw.line([(x, top_box[1]), (x, top_box[3])], fill=tuple(c // 2 for c in ONSET_COLOUR))
        draw.line([(x, bottom_box[1]), (x, bottom_box[3])], fill=ONSET_COLOUR, width=2)
    for impact in signals.impact_times.tolist():
        x = _x_of(impact, top_box, duration)
        draw.line([(x, top_box[1]), (x, top_box[1] + 8)], fill=IMPACT_COLOUR, width=3)
    draw.line(_panel_points(signals.motion, signals.fps, top_box, duration), fill=MOTION_COLOUR, width=2)
    draw.line(_panel_points(signals.onset_envelope, signals.envelope_rate, bottom_box, duration), fill=ONSET_COLOUR)
    frame = 1.0 / signals.fps
    peak_values = signals.motion.double()
    scale = float(peak_values.max()) if len(peak_values) and float(peak_values.max()) > 0 else 1.0
    for peak in signals.motion_peak_times.tolist():
        index = min(round(peak * signals.fps), len(peak_values) - 1)
        x = _x_of(peak, top_box, duration)
        y = top_box[3] - (top_box[3] - top_box[1]) * float(peak_values[index]) / scale
        draw.polygon([(x, y - 6), (x - 4, y - 1), (x + 4, y - 1)], fill=MOTION_COLOUR)
    draw.text((4, 4), f"motion (mean flow, px/frame) - triangles: AV-Align peaks, ticks: impacts; "
                      f"1 frame = {1000 * frame:.0f} ms", fill=MOTION_COLOUR, font=font)
    draw.text((4, bottom_box[1] - 14), "audio onset envelope - lines: detected onsets", fill=ONSET_COLOUR, font=font)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
