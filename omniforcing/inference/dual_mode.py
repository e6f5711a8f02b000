"""Dual-mode generation from a Mutual Forcing model: whole clips in its few-step or multi-step mode.

The samplers, caches and mode values live in the sampling layer (:mod:`omniforcing.sampling.dual_mode`, shared
with the training objective); they are re-exported here, where generation has always imported them from.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniforcing.codecs.base import AVCodec
from omniforcing.inference.clips import GeneratedClips, decode_latents
from omniforcing.models.layout import BlockLayout
from omniforcing.models.protocol import AVBackbone
from omniforcing.sampling.dual_mode import DualModes, Mode, stream_blocks
from omniforcing.types import AVLatents

__all__ = ["DualModes", "Mode", "concat_blocks", "dual_modes_from_config", "generate_dual_mode_clips",
           "stream_blocks"]


def concat_blocks(blocks: list[AVLatents]) -> AVLatents:
    """Join per-block latents along latent time."""
    def cat(name: str) -> Tensor | None:
        parts = [getattr(b, name) for b in blocks]
        return None if parts[0] is None else torch.cat(parts, dim=1)

    return AVLatents(cat("video"), cat("audio"))


@torch.no_grad()
def generate_dual_mode_clips(network: AVBackbone, codec: AVCodec, captions: list[str], seconds: int,
                             modes: DualModes, *, video: bool = True, audio: bool = True, mode: Mode = "few_step",
                             seed: int = 0, few_step_times: tuple[float, ...] | None = None,
                             multi_steps: int | None = None) -> GeneratedClips:
    """Generate ``seconds`` (+ the lead) per caption block by block in ``mode`` and decode them.

    Args:
        network: the Mutual Forcing backbone.
        codec: its codec (decodes the latents).
        captions: ``B`` prompts.
        seconds: whole seconds after the lead frame.
        modes: sampler settings (from the training run).
        video: generate the video stream.
        audio: generate the audio stream.
        mode: ``few_step`` (streaming default) or ``multi_step`` (evaluation).
        seed: noise seed.
        few_step_times: override of the few-step grid (e.g. 8 steps).
        multi_steps: override of the multi-step Euler steps.
    """
    num_blocks = BlockLayout.for_seconds(seconds, network.prefix).num_blocks
    blocks = list(stream_blocks(network, captions, num_blocks, modes, video=video, audio=audio, mode=mode,
                                generator=torch.Generator().manual_seed(seed), few_step_times=few_step_times,
                                multi_steps=multi_steps))
    return decode_latents(codec, concat_blocks(blocks), captions)


def dual_modes_from_config(config: dict) -> DualModes:
    """The :class:`DualModes` recorded with an exported model (``config["method_args"]``)."""
    args = config.get("method_args", {})
    missing = [k for k in ("few_step_times", "step_size") if k not in args]
    if missing:
        raise ValueError(f"this model records no Mutual Forcing sampler settings ({', '.join(missing)} missing); "
                         f"was it trained by MutualForcingLitModule? (method: {config.get('method')})")
    return DualModes(few_step_times=tuple(args["few_step_times"]), few_step_size=args["step_size"],
                     multi_step_size=args.get("multi_step_size", 0.0), multi_steps=args.get("sample_steps", 48),
                     multi_shift=args.get("sample_shift", 1.0), video_cfg=args.get("video_cfg", 1.0),
                     audio_cfg=args.get("audio_cfg", 1.0), context_time=args.get("context_time", 0.0),
                     window_seconds=args.get("window_seconds"), audio_window_seconds=args.get("audio_window_seconds"))
