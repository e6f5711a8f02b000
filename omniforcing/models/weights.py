"""Loading weights and coupling uni-modal checkpoints into a joint model (Mutual Forcing stage 2, §7.3).

Every parameter of :class:`~omniforcing.models.transformer.DualStreamTransformer` belongs to one stream: the
video stream is ``video.*`` plus ``layers.N.video.*`` (its cross-attention is audio -> video), the audio stream
``audio.*`` plus ``layers.N.audio.*`` (video -> audio, and the sinks); only a user's shared text encoder
(``text_encoder.*``) belongs to both. A video-only training never runs cross-modal attention, so its
cross-modal gates stay exactly zero; coupling takes each stream from the checkpoint that trained it and the
joint model starts out computing exactly what the two uni-modal models computed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from omniforcing.models.stream_layer import CROSS_GATE, NUM_MODULATIONS

log = logging.getLogger(__name__)


def stream_of(key: str) -> Literal["video", "audio", "shared"]:
    """Which stream owns parameter ``key`` of a DualStreamTransformer state dict."""
    parts = key.split(".")
    if parts[0] in ("video", "audio"):
        return parts[0]
    if parts[0] == "layers" and len(parts) > 2 and parts[2] in ("video", "audio"):
        return parts[2]
    if parts[0] == "text_encoder":
        return "shared"
    raise ValueError(f"parameter {key!r} belongs to no stream; is this a DualStreamTransformer state dict?")


def zero_cross_gates_(state: dict[str, Tensor]) -> None:
    """Set every cross-modal gate (per-layer table row and the global timestep projection) to zero, in place."""
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[-1] == "modulation":
            value[CROSS_GATE].zero_()
        elif parts[0] in ("video", "audio") and parts[1] == "modulation" and parts[2] == "1":
            width = value.shape[-1] if parts[3] == "weight" else value.shape[0] // NUM_MODULATIONS
            value[CROSS_GATE * width:(CROSS_GATE + 1) * width].zero_()


def couple_unimodal(video_state: dict[str, Tensor], audio_state: dict[str, Tensor], *,
                    reset_cross_gates: bool = True) -> dict[str, Tensor]:
    """State of a joint model from a video-only-trained and an audio-only-trained checkpoint of the same config.

    Args:
        video_state: state dict whose video stream was trained (e.g. ``modality="video"``).
        audio_state: state dict whose audio stream was trained.
        reset_cross_gates: zero the cross-modal gates, so the joint model reproduces both uni-modal models
            exactly before joint training (they are already zero after uni-modal training).

    Raises:
        ValueError: if the two states have different keys or shapes, or a shared text encoder differs (then
            the coupled model could not reproduce both).
    """
    if video_state.keys() != audio_state.keys():
        raise ValueError("the two checkpoints have different parameters; couple checkpoints of the same config: "
                         f"{sorted(video_state.keys() ^ audio_state.keys())[:5]}")
    joint = {}
    for key in video_state:
        owner = stream_of(key)
        if video_state[key].shape != audio_state[key].shape:
            raise ValueError(f"{key}: shapes differ ({tuple(video_state[key].shape)} vs "
                             f"{tuple(audio_state[key].shape)})")
        if owner == "shared" and not torch.equal(video_state[key], audio_state[key]):
            raise ValueError(f"shared text encoder weight {key} differs between the checkpoints; the coupled model "
                             "could not reproduce both (freeze a shared encoder during uni-modal training)")
        joint[key] = (audio_state if owner == "audio" else video_state)[key].clone()
    if reset_cross_gates:
        zero_cross_gates_(joint)
    return joint


def load_weights(path: str | Path, prefix: str = "") -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a torch checkpoint (loaded with ``weights_only=True``).

    Args:
        path: the file. A Lightning checkpoint's ``state_dict`` is used when present.
        prefix: keep only keys starting with this (e.g. ``"network."``) and strip it.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"no tensor in {path} starts with {prefix!r}")
    return state


def freeze_unused_parameters(network: nn.Module, modality: Literal["video", "audio"]) -> None:
    """Freeze what a uni-modal run never uses: the other stream and this stream's cross-modal attention.

    They would get no gradient anyway; freezing keeps them out of the optimiser (so weight decay leaves them
    as initialised for the later coupling) and out of DDP's gradient reduction (which otherwise stops on
    unused parameters).
    """
    for name, param in network.named_parameters():
        if stream_of(name) not in (modality, "shared") or ".cross_attn." in name:
            param.requires_grad_(False)
