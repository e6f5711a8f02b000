"""Weights-only reading of network weights from Lightning checkpoints or safetensors (no Lightning import).

Never unpickles arbitrary objects: ``.safetensors`` files, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from omniforcing.models.weights import couple_unimodal

log = logging.getLogger(__name__)

EMA_STATE_KEY = "ema_state"


def read_network_state(path: str | Path, prefer_ema: bool = True) -> dict[str, Tensor]:
    """Network weights from a Lightning checkpoint (``network.*`` keys, EMA weights when present) or safetensors.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file holds no network weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return network_state_from_checkpoint(torch.load(path, map_location="cpu", weights_only=True), prefer_ema, path)


def network_state_from_checkpoint(checkpoint: dict, prefer_ema: bool = True,
                                  path: str | Path = "checkpoint") -> dict[str, Tensor]:
    """Network weights of a loaded Lightning checkpoint dict (EMA weights first when ``prefer_ema``)."""
    if prefer_ema:
        for state in checkpoint.get("callbacks", {}).values():
            if isinstance(state, dict) and state.get(EMA_STATE_KEY):
                log.info("using the EMA weights stored in %s", path)
                return dict(state[EMA_STATE_KEY])
    weights = {k[len("network."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("network.")}
    if not weights:
        raise ValueError(f"{path} holds no 'network.*' weights (is it a checkpoint of this project?)")
    return weights


def load_network_weights(network: nn.Module, path: str | Path, prefer_ema: bool = True) -> None:
    """Load ``network`` from ``path``; parameters absent from the file keep their initialisation (logged).

    Raises:
        ValueError: a tensor's shape differs, or nothing at all matched.
    """
    state = read_network_state(path, prefer_ema)
    own = network.state_dict()
    shape_errors = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape_errors:
        raise ValueError(f"shape mismatch loading {path}: " + "; ".join(shape_errors[:5]))
    result = network.load_state_dict(state, strict=False)
    if len(result.missing_keys) == len(own):
        raise ValueError(f"no parameter of the network matched {path}")
    if result.missing_keys:
        log.warning("initialised from %s; %d tensors not in the file keep their init: %s", path,
                    len(result.missing_keys), ", ".join(result.missing_keys[:8]))
    if result.unexpected_keys:
        log.warning("ignored %d tensors of %s the network does not have: %s", len(result.unexpected_keys), path,
                    ", ".join(result.unexpected_keys[:8]))


def load_coupled(network: nn.Module, video_path: str | Path, audio_path: str | Path) -> None:
    """Initialise a joint ``network`` with the video stream of ``video_path`` and the audio stream of ``audio_path``.

    The two uni-modal checkpoints of the same backbone are merged by
    :func:`~omniforcing.models.weights.couple_unimodal` (cross-modal gates zero, so the coupled model starts as
    the two uni-modal models side by side).
    """
    state = couple_unimodal(read_network_state(video_path), read_network_state(audio_path))
    result = network.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError("the uni-modal checkpoints hold tensors the joint network lacks: "
                         f"{result.unexpected_keys[:5]}")
    if result.missing_keys:
        log.warning("coupled %s + %s; %d tensors keep their init: %s", video_path, audio_path,
                    len(result.missing_keys), ", ".join(result.missing_keys[:8]))
    log.info("joint model coupled from %s (video) and %s (audio); cross-modal gates zero", video_path, audio_path)
