"""``omniforcing data encode``, ``omniforcing data codec-stats`` and ``omniforcing codec export``.

All three name a codec with ``--codec`` (see :func:`open_codec`): the file a codec training run wrote
(``last.ckpt``), a file written by ``save_codec`` / ``codec export`` / ``codec-stats`` (``.safetensors`` with its
``.json``), a config file holding a codec's ``class_path`` tree (a recipe such as
``recipes/latents/learned.yaml`` works as is: its ``model.init_args.codec`` is used), or a class path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import yaml
from torch import nn

from omniforcing.codecs.base import AudioCodec, AVCodec, VideoCodec
from omniforcing.codecs.checkpoint import config_path, load_codec, save_codec
from omniforcing.codecs.normalization import NormalizedAudioCodec, NormalizedVideoCodec
from omniforcing.data.latent_shards import encode_latent_shards, iter_window_batches, plan_windows
from omniforcing.data.shards import iter_tar_samples, resolve_shards
from omniforcing.errors import InvalidInputError, MissingInputError
from omniforcing.inference.export import instantiate
from omniforcing.types import ClipSpec

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt")


def open_codec(spec: str) -> nn.Module:
    """A codec (eval mode) from one of:

    * a ``.safetensors`` file written by ``save_codec`` (with its ``.json`` record beside it), or that record;
    * a Lightning ``.ckpt`` of codec training (``omniforcing fit -c recipes/codec/...``);
    * a ``.yaml``/``.json`` config whose top level, or ``model.init_args.codec`` (a recipe), is a codec's
      ``{"class_path", "init_args"}`` tree; ``checkpoint`` paths in it are relative to the current directory;
    * a class path such as ``omniforcing.codecs.MelAudioCodec`` (that codec with its defaults).

    Raises:
        MissingInputError: ``spec`` is neither an existing file nor a class path.
        InvalidInputError: the file or class is not a codec.
    """
    path = Path(spec)
    if path.suffix in WEIGHT_SUFFIXES:
        if not path.is_file():
            raise MissingInputError(f"--codec {spec}: no such file")
        return load_codec(path)
    if path.suffix in CONFIG_SUFFIXES and not path.is_file():
        raise MissingInputError(f"--codec {spec}: no such file")
    if path.suffix in CONFIG_SUFFIXES:
        config = yaml.safe_load(path.read_text())
        weights = path.with_suffix(".safetensors")
        if path.suffix == ".json" and weights.is_file() and config_path(weights) == path:
            return load_codec(weights)  # the record save_codec wrote beside its weights
        tree = config.get("model", {}).get("init_args", {}).get("codec", config) if isinstance(config, dict) else None
        if not (isinstance(tree, dict) and "class_path" in tree):
            raise InvalidInputError(f"{path} holds no codec config (a class_path tree at the top or at "
                                    "model.init_args.codec)")
        return instantiate(tree).eval()
    if "." in spec and not path.exists() and "/" not in spec:
        return instantiate({"class_path": spec}).eval()
    raise MissingInputError(f"--codec {spec}: no such codec file (.safetensors, .ckpt, .yaml, .json) or class "
                            "path")


def safetensors_path(out: Path) -> Path:
    """``--out`` of a codec file, which ``save_codec`` writes as safetensors."""
    if Path(out).suffix != ".safetensors":
        raise InvalidInputError(f"--out {out}: a codec is saved as safetensors; give a path ending in .safetensors")
    return Path(out)


def clip_geometry(codec: nn.Module, shards: list[str], seconds: int) -> ClipSpec:
    """Window geometry: the codec's own rates and frame size, the rest from the first sample's json."""
    meta: dict = {}
    for _, members in iter_tar_samples(shards[0]):
        meta = json.loads(members.get("json", b"{}"))
        break
    video = codec.video if isinstance(codec, AVCodec) else codec if isinstance(codec, VideoCodec) else None
    audio = codec.audio if isinstance(codec, AVCodec) else codec if isinstance(codec, AudioCodec) else None
    return ClipSpec(seconds, fps=video.fps if video else int(meta.get("fps", 24)),
                    sample_rate=audio.sample_rate if audio else int(meta.get("sample_rate", 16000)),
                    size=video.size[0] if video else int(meta.get("size", 32)),  # type: ignore[union-attr]
                    width=video.size[1] if video else meta.get("width"))  # type: ignore[union-attr]


def encode(*, source: str, codec: str, out: Path, seconds: int = 2, stride_seconds: int = 1, shard_size: int = 256,
           batch_size: int = 16, dtype: Literal["float16", "float32"] = "float32", device: str = "cpu",
           text_encoder: Path | None = None, text_dtype: Literal["bfloat16", "float32"] = "bfloat16",
           text_max_length: int = 1024) -> None:
    """Pre-encode media shards into latent shards, so methods train on latents without decoding media.

    Every stored clip of L seconds gives windows of SECONDS at offsets 0, stride, ... (offset + SECONDS <= L),
    each encoded from its own first frame. Re-running the same command resumes: finished shards are kept.
    Train on the result with ``-c recipes/data/latents.yaml`` and the same codec in the method recipe.
    With ``--text-encoder`` each window also stores its caption's prompt features, and OUT a bank of every caption
    (``prompts.safetensors``) that ``PromptBank`` reads, so LTX-2 runs without its text encoder (docs/data.md).

    Args:
        source: media shards (``data synth`` / ``data pack`` output): folder, brace pattern, glob or list; on
            the command line ``--in SHARDS``.
        codec: an AVCodec: a config such as ``recipes/latents/learned.yaml`` (its ``model.init_args.codec``), or
            a ``.safetensors`` written by ``save_codec`` / ``data codec-stats`` for an AVCodec.
        out: output folder of latent shards.
        seconds: window length in seconds after the lead frame (the longest clip.seconds to train with).
        stride_seconds: seconds between the start of consecutive windows of one clip.
        shard_size: windows per output shard.
        batch_size: windows encoded at once.
        dtype: storage type of the latents (float32 reads back exactly; float16 halves the size, docs/codecs.md).
        device: device of the codec (``cpu``, ``cuda``) and of the text encoder.
        text_encoder: a local folder: LTX-2's ``text_encoder/``, ``tokenizer/`` and ``connectors/`` (Gemma-3 + its
            connectors), or any transformers encoder (``AutoModel`` + ``AutoTokenizer``).
        text_dtype: compute dtype of the text encoder (features are stored as bfloat16).
        text_max_length: tokens per caption (LTX-2's ``max_sequence_length``, a multiple of 128).
    """
    model = open_codec(codec)
    if not isinstance(model, AVCodec):
        raise InvalidInputError(f"--codec {codec} is a {type(model).__name__}; encoding needs an AVCodec (video and "
                                "audio), e.g. a config like recipes/latents/learned.yaml whose codecs point at your "
                                "checkpoints")
    files = resolve_shards(source)
    prompts = None
    if text_encoder is not None:
        from omniforcing.data.prompt_encoding import PromptFeatureEncoder  # loads diffusers and transformers
        prompts = PromptFeatureEncoder(text_encoder, device, text_dtype, text_max_length)
    manifest = encode_latent_shards(model, files, out, seconds, stride_seconds, shard_size, batch_size, dtype, device,
                                    prompt_encoder=prompts)
    print(f"encoded {manifest['samples']} windows of {seconds} s into {len(manifest['shards'])} shards in {out} "
          f"(codec {manifest['codec_fingerprint']}, {dtype})")
    if prompts is not None:
        print(f"prompt features of {text_encoder}: in each sample, and per caption in {out}/prompts.safetensors")
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])}:")
        for reason in manifest["skipped"][:20]:
            print(f"  - {reason}")


@torch.no_grad()
def codec_stats(shards: str, *, codec: str, out: Path, seconds: int = 2, max_windows: int = 256,
                batch_size: int = 16) -> None:
    """Fit a codec's latent normalisation statistics on media shards and save the codec with them.

    Needed for codecs without training (the mel codec, the patch codec) and to refit a trained codec's statistics
    on your own data. Windows of SECONDS start at 0, SECONDS, 2 SECONDS, ... of each clip. A video or audio codec
    is saved to OUT, which loads as ``checkpoint: OUT`` of the same codec class in a recipe. An AVCodec is saved to
    OUT (usable as ``--codec OUT``) and its parts to OUT_video.safetensors and OUT_audio.safetensors, the files its
    ``video`` and ``audio`` entries in a recipe point ``checkpoint:`` at.

    Args:
        shards: media shards: folder, brace pattern, glob or comma-separated list.
        codec: the codec (any form ``--codec`` takes); a video, an audio or an AV codec.
        out: the ``.safetensors`` file to write (its ``.json`` record is written beside it).
        seconds: window length in seconds after the lead frame.
        max_windows: windows used at most.
        batch_size: windows encoded at once.
    """
    out = safetensors_path(out)
    model = open_codec(codec)
    parts = [model.video, model.audio] if isinstance(model, AVCodec) else [model]
    for part in parts:
        if not isinstance(part, (NormalizedVideoCodec, NormalizedAudioCodec)):
            raise InvalidInputError(f"{type(part).__name__} has no latent normalisation to fit")
    files = resolve_shards(shards)
    spec = clip_geometry(model, files, seconds)
    windows, skipped = plan_windows(files, seconds, seconds, spec.fps, spec.sample_rate, spec.frame_size)
    raw: list[list[torch.Tensor]] = [[] for _ in parts]
    for _, _, video, audio in iter_window_batches(windows[:max_windows], spec, batch_size, skipped):
        for store, part in zip(raw, parts, strict=True):
            store.append(part.encode_raw(video if isinstance(part, VideoCodec) else audio))
    if not raw[0]:
        raise InvalidInputError(f"no usable window of {seconds} s in {shards}: {'; '.join(skipped[:5])}")
    for store, part in zip(raw, parts, strict=True):
        part.normalizer.fit(store)
        normalised = part.normalizer.normalize(torch.cat(store)).movedim(2, -1).flatten(0, -2)
        print(f"{type(part).__name__}: statistics of {int(part.normalizer.num_vectors)} latent vectors from "
              f"{sum(len(s) for s in store)} windows; normalised latents: mean {normalised.mean():+.3f}, "
              f"std {normalised.std():.3f}")
    written = [save_codec(model, out)]
    if isinstance(model, AVCodec):
        written += [save_codec(part, out.with_name(f"{out.stem}_{name}{out.suffix}"))
                    for name, part in (("video", model.video), ("audio", model.audio))]
    print("saved " + ", ".join(f"{path} (+ .json)" for path in written)
          + (f"; {len(skipped)} samples skipped" if skipped else ""))


def export_codec(*, checkpoint: Path, out: Path, dtype: Literal["float32", "bfloat16", "float16"] = "float32") -> None:
    """Write the codec of a codec-training checkpoint as ``.safetensors`` + ``.json`` (what ``save_codec`` writes).

    A trained codec's ``last.ckpt`` is already usable as ``checkpoint:`` in recipes; the exported file is smaller
    (no optimiser state) and is what a codec is shipped as. Normalisation statistics stay float32.

    Args:
        checkpoint: a ``.ckpt`` written by ``omniforcing fit -c recipes/codec/...`` (or any ``--codec`` file).
        out: the ``.safetensors`` file to write.
        dtype: storage type of the weights.
    """
    out = safetensors_path(out)
    model = open_codec(str(checkpoint))
    for parameter in model.parameters():
        parameter.data = parameter.data.to(getattr(torch, dtype))
    save_codec(model, out)
    size = Path(out).stat().st_size / 2**20
    print(f"exported {type(model).__name__} from {checkpoint} to {out} ({size:.2f} MiB, {dtype})")
