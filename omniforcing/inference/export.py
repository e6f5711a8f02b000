"""Export a training checkpoint to plain weights + config, and rebuild networks from them without Lightning.

An exported model is a folder: ``network.safetensors`` (EMA weights when the run kept them), ``codec.safetensors``
and ``config.json`` holding the ``class_path``/``init_args`` trees of network and codec, the clip geometry and
the generation settings of the method. Rebuilding only instantiates classes from an allow-list of packages
(``omniforcing.*``, ``torch.*``), so a config file cannot run arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from safetensors.torch import load_file, save_file
from torch import nn

from omniforcing.codecs.base import AVCodec
from omniforcing.errors import InvalidInputError, MissingInputError
from omniforcing.inference.checkpoints import network_state_from_checkpoint

ALLOWED_PREFIXES = ("omniforcing.", "torch.")
CONFIG_NAME, NETWORK_NAME, CODEC_NAME = "config.json", "network.safetensors", "codec.safetensors"


def check_class_paths(tree: Any, where: str = "config") -> None:
    """Raise :class:`~omniforcing.errors.InvalidInputError` (a ``ValueError``) if any ``class_path`` in ``tree``
    lies outside the allow-list."""
    if isinstance(tree, dict):
        path = tree.get("class_path")
        if path is not None and not str(path).startswith(ALLOWED_PREFIXES):
            raise InvalidInputError(f"{where}: refusing to instantiate '{path}' (allowed: {', '.join(ALLOWED_PREFIXES)})")
        for key, value in tree.items():
            check_class_paths(value, f"{where}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_class_paths(value, f"{where}[{i}]")


def instantiate(config: dict[str, Any], base: type = nn.Module) -> Any:
    """Build an object from a ``{"class_path", "init_args"}`` tree (typed by jsonargparse, allow-listed)."""
    check_class_paths(config)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, "obj", required=True)
    parsed = parser.parse_object({"obj": config})
    return parser.instantiate(parsed).obj


def _contiguous(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    return out


def save_exported(out_dir: str | Path, network: nn.Module, codec: AVCodec, config: dict[str, Any],
                  network_state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write an exported model folder; ``config`` must hold ``network`` and ``codec`` class trees."""
    for key in ("network", "codec"):
        if key not in config:
            raise ValueError(f"export config lacks '{key}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(network_state or network.state_dict(), dtype), str(out / NETWORK_NAME))
    save_file(_contiguous(codec.state_dict(), None), str(out / CODEC_NAME))
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return out


def load_exported(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, AVCodec, dict]:
    """Rebuild ``(network, codec, config)`` from an exported folder; weights are cast to float32."""
    folder = Path(path)
    if not (folder / CONFIG_NAME).is_file():
        raise MissingInputError(f"{folder} is not an exported model (no {CONFIG_NAME})")
    config = json.loads((folder / CONFIG_NAME).read_text())
    network = instantiate(config["network"])
    codec = instantiate(config["codec"], AVCodec)
    for module, name in ((network, NETWORK_NAME), (codec, CODEC_NAME)):
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(folder / name)).items()}
        module.load_state_dict(state, strict=True)
    return network.to(device).eval(), codec.to(device).eval(), config


def _without_checkpoint_paths(tree: Any) -> Any:
    """Copy of a class tree with ``checkpoint`` init args cleared: exported weights replace those files."""
    if isinstance(tree, dict):
        return {k: (None if k == "checkpoint" else _without_checkpoint_paths(v)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_without_checkpoint_paths(v) for v in tree]
    return tree


TRAINING_ONLY_ARGS = ("network", "codec", "objective", "optimizer", "scheduler", "critic_optimizer", "teacher",
                      "critic", "init_from", "init_video_from", "init_audio_from", "teacher_from", "critic_from",
                      "_instantiator")


def model_from_checkpoint(checkpoint: str | Path, use_ema: bool = True) -> tuple[nn.Module, AVCodec, dict]:
    """Rebuild ``(network, codec, config)`` from a Lightning checkpoint written by ``omniforcing fit``.

    The checkpoint's hyperparameters (the config tree LightningCLI saved) give the network and codec classes;
    its weights are read with ``weights_only=True``; EMA weights are used when present and ``use_ema``.
    """
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a file that is not a checkpoint
        raise InvalidInputError(f"{checkpoint} is not a readable checkpoint: {type(error).__name__}") from error
    hparams = dict(ckpt.get("hyper_parameters", {})) if isinstance(ckpt, dict) else {}
    if "network" not in hparams or "codec" not in hparams:
        raise InvalidInputError(f"{checkpoint} has no network/codec config: was it trained through `omniforcing "
                                "fit`?")
    config = {
        "method": hparams.get("_class_path"),
        "network": hparams["network"],
        "codec": _without_checkpoint_paths(hparams["codec"]),
        "method_args": {k: v for k, v in hparams.items() if k not in TRAINING_ONLY_ARGS and k != "_class_path"},
        "source_checkpoint": str(checkpoint),
        "global_step": int(ckpt.get("global_step", 0)),
    }
    network = instantiate(config["network"])
    codec = instantiate(config["codec"], AVCodec)
    codec_state = {k[len("codec."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("codec.")}
    codec.load_state_dict(codec_state, strict=True)
    network.load_state_dict(network_state_from_checkpoint(ckpt, use_ema, checkpoint), strict=True)
    return network.eval(), codec.eval(), config


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, use_ema: bool = True,
                      dtype: torch.dtype | None = None) -> Path:
    """Export a Lightning checkpoint to a self-contained folder (see :func:`model_from_checkpoint`)."""
    network, codec, config = model_from_checkpoint(checkpoint, use_ema)
    return save_exported(out_dir, network, codec, config, dtype=dtype)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, AVCodec, dict]:
    """``(network, codec, config)`` from an exported folder or a Lightning ``.ckpt`` file."""
    path = Path(path)
    if path.is_dir():
        return load_exported(path, device)
    if path.suffix == ".ckpt" and path.is_file():
        network, codec, config = model_from_checkpoint(path)
        return network.to(device), codec.to(device), config
    raise MissingInputError(f"no exported model folder or .ckpt file at {path}")
