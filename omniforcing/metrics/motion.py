"""Visual motion measurements without learned weights: dense optical flow and per-frame motion envelopes.

The flow is our own coarse-to-fine (pyramidal) Lucas-Kanade estimate in torch, not OpenCV's Farneback (the
flow of the AV-Align reference). Both give a dense field in pixels per frame; the differences that matter:

* Lucas-Kanade solves a 2x2 least-squares system per pixel over a Gaussian window (sigma 2 px at every
  pyramid level) with a small Tikhonov term, so uniform regions get ~zero flow (the aperture problem);
  Farneback's polynomial expansion smooths flow into such regions, so its mean magnitude is somewhat
  larger for textureless moving objects;
* frames are downscaled so the longer side is at most ``max_side`` pixels before estimation and the flow is
  scaled back to the native pixel unit, so thresholds such as AV-Align's 0.1 px keep their meaning;
* 3 pyramid levels with 2 warping iterations each (Farneback in AV-Align: 3 levels, 3 iterations).

Time convention (AV-Align's): the motion between frames ``i - 1`` and ``i`` belongs to frame ``i`` at
``i / fps`` seconds, and the first value is repeated for frame 0 so a clip of ``T`` frames gives ``T`` values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights, as OpenCV's RGB-to-gray conversion."""


def to_luma(video: Tensor) -> Tensor:
    """Luma ``(B, T, H, W)`` of a ``(B, T, 3, H, W)`` video in ``[0, 1]``."""
    weights = torch.tensor(_LUMA, dtype=video.dtype, device=video.device)
    return torch.einsum("btchw,c->bthw", video, weights)


def downscale(frames: Tensor, max_side: int) -> tuple[Tensor, float]:
    """Area-downscale ``(N, H, W)`` so the longer side is ``<= max_side``.

    Returns the frames and the factor ``native_pixels / processed_pixels`` (1.0 when no resize was needed).
    """
    height, width = frames.shape[-2:]
    scale = max(height, width) / max_side
    if scale <= 1:
        return frames, 1.0
    size = (max(1, round(height / scale)), max(1, round(width / scale)))
    resized = F.interpolate(frames[:, None], size=size, mode="area")[:, 0]
    return resized, height / size[0]


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with replicate padding."""
    radius = max(1, math.ceil(2.5 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(x.shape[1], 1, 1, -1),
                 groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(x.shape[1], 1, -1, 1),
                    groups=x.shape[1])


def _gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Central-difference gradients of ``(N, 1, H, W)`` with replicate padding."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    grad_x = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    grad_y = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return grad_x, grad_y


def _warp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample ``image`` ``(N, 1, H, W)`` at ``p + flow(p)`` (bilinear, border values outside)."""
    height, width = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=image.dtype, device=image.device),
                            torch.arange(width, dtype=image.dtype, device=image.device), indexing="ij")
    grid_x = 2 * (xs + flow[:, 0]) / max(width - 1, 1) - 1
    grid_y = 2 * (ys + flow[:, 1]) / max(height - 1, 1) - 1
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _pyramid(frames: Tensor, levels: int) -> list[Tensor]:
    pyramid = [frames[:, None]]
    while len(pyramid) < levels and min(pyramid[-1].shape[-2:]) >= 16:
        pyramid.append(F.avg_pool2d(_gaussian_blur(pyramid[-1], 1.0), 2))
    return pyramid


def estimate_flow(previous: Tensor, following: Tensor, *, levels: int = 3, iterations: int = 2,
                  window_sigma: float = 2.0, regularization: float = 1e-4) -> Tensor:
    """Dense optical flow by pyramidal Lucas-Kanade with warping (Bouguet 2001, dense variant).

    Args:
        previous: ``(N, H, W)`` float luma in ``[0, 1]``.
        following: ``(N, H, W)`` the next frames.
        levels: pyramid levels (stops early when a level would be smaller than 16 px).
        iterations: warping iterations per level.
        window_sigma: standard deviation in pixels of the Gaussian least-squares window.
        regularization: Tikhonov term added to the structure tensor; keeps flat regions at zero flow.

    Returns:
        ``(N, 2, H, W)`` flow ``(u, v)`` in pixels with ``previous(p) ~ following(p + flow(p))``.
    """
    pyramid_prev, pyramid_next = _pyramid(previous.float(), levels), _pyramid(following.float(), levels)
    flow = previous.new_zeros(previous.shape[0], 2, *pyramid_prev[-1].shape[-2:])
    for level_prev, level_next in zip(reversed(pyramid_prev), reversed(pyramid_next), strict=True):
        if flow.shape[-2:] != level_prev.shape[-2:]:
            factor = torch.tensor([level_prev.shape[-1] / flow.shape[-1], level_prev.shape[-2] / flow.shape[-2]],
                                  dtype=flow.dtype, device=flow.device)
            flow = F.interpolate(flow, size=level_prev.shape[-2:], mode="bilinear", align_corners=False)
            flow = flow * factor.view(1, 2, 1, 1)
        for _ in range(iterations):
            warped = _warp(level_next, flow)
            grad_x, grad_y = _gradients((level_prev + warped) / 2)
            grad_t = warped - level_prev
            products = torch.cat([grad_x * grad_x, grad_x * grad_y, grad_y * grad_y, grad_x * grad_t,
                                  grad_y * grad_t], dim=1)
            sxx, sxy, syy, sxt, syt = _gaussian_blur(products, window_sigma).unbind(dim=1)
            sxx, syy = sxx + regularization, syy + regularization
            determinant = sxx * syy - sxy * sxy
            step_u = (-syy * sxt + sxy * syt) / determinant
            step_v = (sxy * sxt - sxx * syt) / determinant
            flow = flow + torch.stack([step_u, step_v], dim=1)
    return flow


def dense_flow(video: Tensor, *, max_side: int = 256, chunk: int = 32) -> Tensor:
    """Flow between consecutive frames of each clip, in native pixels per frame.

    Args:
        video: ``(B, T, 3, H, W)`` float in ``[0, 1]``, ``T >= 2``.
        max_side: frames are downscaled so the longer side is at most this before estimation.
        chunk: frame pairs per estimation call (bounds memory).

    Returns:
        ``(B, T - 1, 2, h, w)`` float32 flow at the processing resolution, already multiplied by the
        downscale factor so values are native pixels.
    """
    batch, frames = video.shape[:2]
    if frames < 2:
        raise ValueError(f"motion needs at least 2 frames, got {frames}")
    luma, scale = downscale(to_luma(video).flatten(0, 1), max_side)
    luma = luma.view(batch, frames, *luma.shape[-2:])
    previous, following = luma[:, :-1].flatten(0, 1), luma[:, 1:].flatten(0, 1)
    flows = [estimate_flow(previous[i:i + chunk], following[i:i + chunk]) for i in range(0, len(previous), chunk)]
    return (torch.cat(flows) * scale).view(batch, frames - 1, 2, *luma.shape[-2:])


def _repeat_first(values: Tensor) -> Tensor:
    return torch.cat([values[:, :1], values], dim=1)


def motion_magnitude(flow: Tensor) -> Tensor:
    """AV-Align trajectory: mean flow magnitude per frame, ``(B, T - 1, 2, h, w)`` -> ``(B, T)``.

    The first value is repeated for frame 0; units are native pixels per frame.
    """
    return _repeat_first(flow.norm(dim=2).mean(dim=(2, 3)))


def flow_change(flow: Tensor, grid: int = 4) -> Tensor:
    """Visual impact envelope: change of the cell-averaged flow between consecutive frame pairs.

    The flow is averaged over a ``grid x grid`` layout of cells, and frame ``i`` gets the mean over cells of
    ``|cell_flow(i -> i+1) - cell_flow(i-1 -> i)|``. An object moving at constant speed inside a cell gives ~0;
    an impact (sudden reversal or stop) gives a peak at the turning frame. Returns ``(B, T)`` native pixels per
    frame^2, 0 at the first and last frame.
    """
    cells = F.adaptive_avg_pool2d(flow.flatten(0, 1), grid).view(*flow.shape[:2], 2, grid, grid)
    change = (cells[:, 1:] - cells[:, :-1]).norm(dim=2).mean(dim=(2, 3))
    zeros = change.new_zeros(change.shape[0], 1)
    return torch.cat([zeros, change, zeros], dim=1)


def frame_difference(video: Tensor) -> Tensor:
    """Mean absolute luma change per frame, ``(B, T, 3, H, W)`` in ``[0, 1]`` -> ``(B, T)``, first repeated."""
    luma = to_luma(video)
    return _repeat_first((luma[:, 1:] - luma[:, :-1]).abs().mean(dim=(2, 3)))
