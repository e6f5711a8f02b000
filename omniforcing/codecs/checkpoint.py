"""Saving and loading codecs: safetensors weights plus a JSON record of the constructor arguments.

``save_codec(codec, "runs/codecs/video_ae.safetensors")`` writes the weights (including the latent
normalisation statistics, which are buffers) and ``video_ae.json`` beside them::

    {"class_path": "omniforcing.codecs.video_autoencoder.CausalVideoAutoencoder",
     "init_args": {"size": 32, "latent_channels": 16, ...}}

A recipe then rebuilds the codec by class path with ``init_args: {checkpoint: path}``; the codec's
``__init__`` calls :func:`load_codec_weights`, which checks the JSON record against the arguments it was
built with and the tensor names and shapes against its ``state_dict`` (and names every difference).
:func:`load_codec` rebuilds a codec from the JSON alone. Nothing is ever unpickled: weights come from
safetensors, or from ``torch.load(weights_only=True)`` for plain ``.pt``/``.ckpt`` state dicts.

A Lightning checkpoint of codec training (``omniforcing.training.CodecLitModule``, ``omniforcing fit -c
recipes/codec/...``) is accepted wherever a weights file is: its ``codec.*`` tensors are the codec's state and
its ``codec_config`` entry plays the role of the JSON record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from omniforcing.class_paths import import_class
from omniforcing.codecs.base import AudioCodec, AVCodec, VideoCodec
from omniforcing.errors import InvalidInputError, MissingInputError

CODEC_BASES = (VideoCodec, AudioCodec, AVCodec)
LIGHTNING_CODEC_PREFIX = "codec."
"""Prefix of the codec's tensors in a Lightning checkpoint's ``state_dict`` (the module attribute ``codec``)."""
CHECKPOINT_CONFIG_KEY = "codec_config"
"""Entry of a codec-training Lightning checkpoint holding the codec's ``{"class_path", "init_args"}`` record."""


def codec_config(codec: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a codec, nested for :class:`AVCodec` and codecs holding codecs.

    Codec classes record their constructor arguments (without ``checkpoint``) in ``self.init_args``, automatically
    (:class:`~omniforcing.class_paths.RecordsInitArgs`, a base of every video and audio codec).
    """
    if isinstance(codec, AVCodec) and not hasattr(codec, "init_args"):
        args: dict[str, Any] = {"video": codec.video, "audio": codec.audio}
    elif hasattr(codec, "init_args"):
        args = dict(codec.init_args)
    else:
        raise TypeError(f"{type(codec).__name__} does not record its init_args; it cannot be saved as a codec")
    args = {k: codec_config(v) if isinstance(v, nn.Module) else v for k, v in args.items()}
    return {"class_path": f"{type(codec).__module__}.{type(codec).__qualname__}", "init_args": args}


def config_path(weights_path: str | Path) -> Path:
    """The JSON record that belongs to a weights file (same stem, ``.json``)."""
    return Path(weights_path).with_suffix(".json")


def save_codec(codec: nn.Module, path: str | Path) -> Path:
    """Write ``codec``'s weights and buffers to ``path`` (safetensors) and its config to ``path.json``.

    Args:
        codec: a :class:`VideoCodec`, :class:`AudioCodec` or :class:`AVCodec`.
        path: the ``.safetensors`` file to write; parent folders are created.

    Returns:
        The path of the weights file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_codec writes safetensors; give a path ending in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "omniforcing-codec"})
    config_path(path).write_text(json.dumps(codec_config(codec), indent=2) + "\n")
    return path


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file, or of a torch file loaded with ``weights_only=True``.

    A torch file may hold the state dict itself or ``{"state_dict": ...}`` (a Lightning checkpoint); of a
    Lightning state dict that holds ``codec.*`` tensors only those are returned, without the prefix.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a readable weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"codec checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise InvalidInputError(f"codec checkpoint {path} is not a readable safetensors file: {err}") from err
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise InvalidInputError(f"codec checkpoint {path} is neither safetensors nor a torch weights file: "
                                f"{type(err).__name__}") from err
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
        if any(k.startswith(LIGHTNING_CODEC_PREFIX) for k in payload):
            payload = {k[len(LIGHTNING_CODEC_PREFIX):]: v for k, v in payload.items()
                       if k.startswith(LIGHTNING_CODEC_PREFIX)}
    if not isinstance(payload, dict) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise InvalidInputError(f"codec checkpoint {path} does not hold a state dict of tensors")
    return payload


REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
"""Where ``checkpoints/reference/`` lives in a source checkout (recipes name the shipped codec relative to it)."""


def resolve_codec_path(path: str | Path) -> Path:
    """A relative path that does not exist from the working directory is looked up from the repository root.

    Recipes name the shipped codec as ``checkpoints/reference/codec/...``; this keeps them working when a run is
    started from another directory. Absolute paths and paths that exist are returned unchanged.
    """
    path = Path(path)
    if path.is_absolute() or path.exists() or not (REPOSITORY_ROOT / path).exists():
        return path
    return REPOSITORY_ROOT / path


def load_codec_weights(codec: nn.Module, path: str | Path) -> None:
    """Load weights and normalisation statistics into ``codec``, strictly.

    If ``path.json`` exists (or, for a codec-training Lightning checkpoint, its ``codec_config``), its class path
    and init args must equal the codec's own.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: unreadable file, config mismatch, missing/unexpected keys or shape mismatches (all named).
    """
    path = resolve_codec_path(path)
    _check_config(codec, path)
    state = read_state_dict(path)
    own = codec.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs codec {tuple(own[k].shape)}"
                   for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        raise InvalidInputError(
            f"codec checkpoint {path} does not match {type(codec).__name__}: "
            f"missing keys {_short(missing)}; unexpected keys {_short(unexpected)}; shape mismatches {wrong_shape}"
        )
    codec.load_state_dict(state, strict=True)


def _short(keys: list[str], limit: int = 12) -> str:
    return str(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def saved_config(path: str | Path) -> tuple[dict[str, Any] | None, str]:
    """The config record saved with a codec's weights, and where it was found (for messages).

    ``path.json`` beside the weights (written by :func:`save_codec`), else the ``codec_config`` entry of a
    Lightning checkpoint written by codec training; ``(None, "")`` when there is neither.
    """
    record_path = config_path(path)
    if record_path.is_file():
        return json.loads(record_path.read_text()), str(record_path)
    if Path(path).suffix == ".ckpt" and Path(path).is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several unrelated types for a bad file
            raise InvalidInputError(f"codec checkpoint {path} is not a torch weights file: "
                                    f"{type(err).__name__}") from err
        record = payload.get(CHECKPOINT_CONFIG_KEY) if isinstance(payload, dict) else None
        if isinstance(record, dict):
            return record, f"the '{CHECKPOINT_CONFIG_KEY}' entry of {path}"
    return None, ""


def _check_config(codec: nn.Module, path: str | Path) -> None:
    record, where = saved_config(path)
    if record is None:
        return
    own = codec_config(codec)
    if record.get("class_path") != own["class_path"]:
        raise InvalidInputError(f"codec checkpoint {path} was saved from {record.get('class_path')}, "
                         f"not {own['class_path']} (see {where})")
    saved, built = record.get("init_args", {}), own["init_args"]
    differ = [f"{k}: saved {saved.get(k)!r}, built {built.get(k)!r}"
              for k in sorted(set(saved) | set(built)) if _normal(saved.get(k)) != _normal(built.get(k))]
    if differ:
        raise InvalidInputError(f"codec checkpoint {path} was saved with other init_args than this codec was built "
                         f"with: {differ}; set them as in {where}")


def _normal(value: Any) -> Any:
    """JSON round trip so tuples and lists compare equal."""
    return json.loads(json.dumps(value))


def build_codec(config: dict[str, Any]) -> nn.Module:
    """Instantiate a codec from ``{"class_path", "init_args"}`` (nested configs are built first).

    Only subclasses of :class:`VideoCodec`, :class:`AudioCodec` or :class:`AVCodec` may be built; a class path
    that does not import or is not a codec is an :class:`~omniforcing.errors.InvalidInputError` (one line).
    """
    cls = import_class(str(config["class_path"]), CODEC_BASES, "codec")
    args = {k: build_codec(v) if isinstance(v, dict) and "class_path" in v else v
            for k, v in config.get("init_args", {}).items()}
    return cls(**args)


def load_codec(path: str | Path) -> nn.Module:
    """Rebuild a codec from ``path`` and its config record, in eval mode.

    ``path`` is a ``.safetensors`` file from :func:`save_codec` (with its ``.json`` record) or a Lightning
    ``.ckpt`` of codec training (which holds the record as ``codec_config``).
    """
    record, _ = saved_config(path)
    if record is None:
        raise MissingInputError(f"{config_path(path)} (the codec's config record written by save_codec) is missing"
                                + (f" and {path} holds no '{CHECKPOINT_CONFIG_KEY}'" if Path(path).suffix == ".ckpt"
                                   else ""))
    codec = build_codec(record)
    load_codec_weights(codec, path)
    return codec.eval()
