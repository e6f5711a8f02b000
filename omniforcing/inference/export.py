"""Export a training checkpoint to plain weights + config, and rebuild networks from them without Lightning.

An exported model is a folder: ``network.safetensors`` (EMA weights when the run kept them), ``codec.safetensors``
and ``config.json`` holding

* ``network``: the backbone's ``class_path``/``init_args`` (as LightningCLI writes it), so ``generate``, ``serve``
  and ``evaluate`` rebuild whichever backbone was trained (``DualStreamTransformer``, the LTX-2 adapter, a
  user's class); exports written before the class path was recorded hold only the init args and load as
  :data:`DEFAULT_BACKBONE`;
* ``codec``: the codec's class tree;
* ``method`` and ``method_args``: the training method and the generation settings it declared
  (``generation_settings()`` of the method's LightningModule, saved in every checkpoint under
  :data:`GENERATION_SETTINGS_KEY`; read by :mod:`omniforcing.inference.stream_settings`).

Rebuilding only instantiates classes from trusted packages (``omniforcing``, ``torch`` and those listed in
``$OMNIFORCING_TRUSTED_PACKAGES``), so a config file cannot run arbitrary code; every class path is imported
and checked first, so a wrong one is a one-line error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from jsonargparse import ArgumentError
from safetensors.torch import load_file, save_file
from torch import nn

from omniforcing.class_paths import class_path_of, import_class
from omniforcing.codecs.base import AVCodec
from omniforcing.errors import InvalidInputError, MissingInputError
from omniforcing.inference.checkpoints import network_state_from_checkpoint

BUILTIN_PACKAGES = ("omniforcing", "torch")
TRUSTED_PACKAGES_ENV = "OMNIFORCING_TRUSTED_PACKAGES"
"""Comma-separated extra packages whose classes exported configs may name (your own backbones and codecs)."""
CONFIG_NAME, NETWORK_NAME, CODEC_NAME = "config.json", "network.safetensors", "codec.safetensors"
DEFAULT_BACKBONE = "omniforcing.models.DualStreamTransformer"
"""The backbone of exports that recorded only its init args (written before backbones were chosen by class)."""
GENERATION_SETTINGS_KEY = "generation_settings"
"""Entry of a training checkpoint with the method's declared generation settings (export's ``method_args``)."""


def trusted_packages() -> tuple[str, ...]:
    """Packages whose classes may be instantiated from a config: the built-in ones plus ``$OMNIFORCING_TRUSTED_PACKAGES``."""
    extra = [name.strip() for name in os.environ.get(TRUSTED_PACKAGES_ENV, "").split(",") if name.strip()]
    return (*BUILTIN_PACKAGES, *extra)


def check_class_paths(tree: Any, where: str = "config") -> None:
    """Raise :class:`~omniforcing.errors.InvalidInputError` (a ``ValueError``) if any ``class_path`` in ``tree``
    lies outside the trusted packages or cannot be imported."""
    if isinstance(tree, dict):
        path = tree.get("class_path")
        if path is not None:
            packages = trusted_packages()
            if not any(str(path) == p or str(path).startswith(p + ".") for p in packages):
                raise InvalidInputError(f"{where}: refusing to instantiate '{path}' (trusted packages: "
                                        f"{', '.join(packages)}; add yours to ${TRUSTED_PACKAGES_ENV})")
            import_class(str(path), object, where)
        for key, value in tree.items():
            check_class_paths(value, f"{where}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_class_paths(value, f"{where}[{i}]")


def instantiate(config: dict[str, Any], base: type = nn.Module, what: str = "config") -> Any:
    """Build an object from a ``{"class_path", "init_args"}`` tree (typed by jsonargparse, trusted packages only).

    Raises:
        InvalidInputError: an untrusted or unknown class path, or init args the class does not accept (one line).
    """
    check_class_paths(config, what)
    import_class(str(config.get("class_path")), base, what)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, "obj", required=True)
    try:
        parsed = parser.parse_object({"obj": config})
    except ArgumentError as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise InvalidInputError(f"{what}: {config['class_path']} cannot be built from its init_args: "
                                f"{first}") from error
    return parser.instantiate(parsed).obj


def network_config(tree: dict[str, Any]) -> dict[str, Any]:
    """The backbone's class tree; an old record of init args alone is read as :data:`DEFAULT_BACKBONE`'s."""
    if "class_path" in tree:
        return tree
    return {"class_path": DEFAULT_BACKBONE, "init_args": tree.get("init_args", tree)}


def check_network_class(network: nn.Module, tree: dict[str, Any]) -> None:
    """The recorded class path must name the class of the network whose weights are written."""
    recorded = import_class(str(tree["class_path"]), nn.Module, "network")
    if recorded is not type(network):
        raise InvalidInputError(f"export config names network class {tree['class_path']}, but the network is a "
                                f"{class_path_of(type(network))}")


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
    """Write an exported model folder; ``config`` must hold ``network`` and ``codec`` class trees.

    A ``network`` tree without ``class_path`` gets the network's own class; one with a class path must name it.
    """
    for key in ("network", "codec"):
        if key not in config:
            raise ValueError(f"export config lacks '{key}'")
    tree = config["network"]
    if "class_path" not in tree:
        tree = {"class_path": class_path_of(type(network)), "init_args": tree.get("init_args", tree)}
    check_network_class(network, tree)
    config = {**config, "network": tree}
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
    config["network"] = network_config(config["network"])
    network = instantiate(config["network"], nn.Module, f"{folder / CONFIG_NAME}: network")
    codec = instantiate(config["codec"], AVCodec, f"{folder / CONFIG_NAME}: codec")
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


LEGACY_TRAINING_ONLY_ARGS = ("network", "codec", "objective", "optimizer", "scheduler", "critic_optimizer",
                             "teacher", "critic", "init_from", "init_video_from", "init_audio_from", "teacher_from",
                             "critic_from", "_instantiator")
"""Hyperparameters left out of ``method_args`` for checkpoints written before methods declared their generation
settings (:data:`GENERATION_SETTINGS_KEY`); new methods never need an entry here."""


def method_args_of(checkpoint: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    """The generation settings the method declared in the checkpoint; for older checkpoints its plain
    hyperparameters without the training-only ones."""
    declared = checkpoint.get(GENERATION_SETTINGS_KEY)
    if isinstance(declared, dict):
        return dict(declared)
    return {k: v for k, v in hparams.items() if k not in LEGACY_TRAINING_ONLY_ARGS and k != "_class_path"}


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
        "network": network_config(hparams["network"]),
        "codec": _without_checkpoint_paths(hparams["codec"]),
        "method_args": method_args_of(ckpt, hparams),
        "source_checkpoint": str(checkpoint),
        "global_step": int(ckpt.get("global_step", 0)),
    }
    network = instantiate(config["network"], nn.Module, f"{checkpoint}: network")
    codec = instantiate(config["codec"], AVCodec, f"{checkpoint}: codec")
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
