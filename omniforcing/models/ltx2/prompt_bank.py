"""Precomputed prompt features: LTX-2's text conditioning with no text encoder at run time.

LTX-2 conditions both streams on the output of its text connectors (Gemma-3 12 B hidden states -> the
``LTX2TextConnectors`` video / audio connectors, docs/data.md "Prompt features"). ``omniforcing data encode
--text-encoder PATH`` runs them once per distinct caption and stores the result; :class:`PromptBank` reads it
back, so training and streaming never load the 12 B encoder.

Storage (bfloat16, the dtype LTX-2 runs in: features computed in bf16 are stored exactly):

* per latent sample, the member ``KEY.prompt.safetensors``: tensors ``video (L, Dv)`` and ``audio (L, Da)``
  (only the ``L`` tokens the connectors' mask keeps; with LTX-2's learnable registers that is every one of the
  ``max_sequence_length`` tokens) and the caption in the safetensors metadata;
* per dataset (or per ``data encode-prompts`` run), the bank file ``prompts.safetensors``: tensors
  ``video.{i}`` / ``audio.{i}`` for the ``i``-th distinct caption, the captions as a JSON list in the metadata,
  always including the unconditional prompt ``""`` (LTX-2's default negative prompt).

Nothing is pickled. The bank file is written one caption at a time (its tensors' bytes copied from the members)
and read lazily (safetensors maps it), so neither writing nor reading holds a dataset's features in memory.
"""

from __future__ import annotations

import json
import os
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from omniforcing.errors import InvalidInputError, MissingInputError
from omniforcing.models.text import TextContext, TextEmbedding

PROMPT_MEMBER = "prompt.safetensors"
"""Tar member (after the sample key) holding one latent sample's caption features."""

BANK_NAME = "prompts.safetensors"
"""The bank file ``data encode --text-encoder`` writes into a latent-shard folder."""

BANK_FORMAT = "omniforcing-prompt-bank-1"
UNCONDITIONAL = ""
"""The caption whose features are the unconditional input (classifier-free guidance, caption dropout)."""

STORAGE_DTYPE = torch.bfloat16

ENCODE_HINT = ("encode it with `omniforcing data encode --text-encoder PATH` (dataset captions) or "
               "`omniforcing data encode-prompts --text-encoder PATH --prompts FILE --out BANK` (prompts to stream)")


@dataclass(frozen=True)
class PromptFeatures:
    """One caption's connector outputs, padding removed.

    Args:
        video: ``(L, Dv)`` features for the video stream's caption projection.
        audio: ``(L, Da)`` features for the audio stream's caption projection (same ``L``).
    """

    video: Tensor
    audio: Tensor

    def stored(self) -> PromptFeatures:
        """The features as stored: contiguous CPU bfloat16."""
        return PromptFeatures(*(t.detach().to("cpu", STORAGE_DTYPE).contiguous() for t in (self.video, self.audio)))


def prompt_member_bytes(caption: str, features: PromptFeatures) -> bytes:
    """The ``prompt.safetensors`` member of a latent sample (bfloat16 tensors, caption in the metadata)."""
    stored = features.stored()
    return save_safetensors({"video": stored.video, "audio": stored.audio}, metadata={"caption": caption})


def safetensors_header(data: bytes) -> tuple[dict, int]:
    """``(header, start of the tensor data)`` of safetensors bytes: an 8-byte little-endian header length, the JSON
    header (per tensor ``dtype``, ``shape``, ``data_offsets`` from the data start; ``__metadata__``), the data."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), 8 + length


def read_prompt_member(data: bytes) -> tuple[str, PromptFeatures]:
    """``(caption, features)`` of a ``prompt.safetensors`` member."""
    tensors = load_safetensors(data)
    return safetensors_header(data)[0]["__metadata__"]["caption"], PromptFeatures(tensors["video"], tensors["audio"])


@dataclass(frozen=True)
class MemberLocation:
    """Where a ``prompt.safetensors`` member's bytes lie in a latent shard (plain tar: read them by seeking)."""

    shard: Path
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as file:
            file.seek(self.offset)
            return file.read(self.size)


def index_shard_prompts(shard: Path) -> dict[str, MemberLocation]:
    """Caption -> location of its first ``prompt.safetensors`` member in a latent shard (reads headers only)."""
    found: dict[str, MemberLocation] = {}
    with tarfile.open(shard) as archive, open(shard, "rb") as file:
        for info in archive:
            if info.isfile() and Path(info.name).name.partition(".")[2] == PROMPT_MEMBER:
                file.seek(info.offset_data)
                (length,) = struct.unpack("<Q", file.read(8))
                caption = json.loads(file.read(length))["__metadata__"]["caption"]
                found.setdefault(caption, MemberLocation(Path(shard), info.offset_data, info.size))
    return found


def write_prompt_bank(path: Path, captions: list[str], member: Callable[[str], bytes], encoder: dict) -> None:
    """Write the bank file of ``captions`` (``""`` among them), atomically, one member in memory at a time.

    The tensors' bytes are copied from each caption's ``prompt.safetensors`` member: a first pass collects their
    shapes for the header, a second copies the data (the safetensors layout: header, then the tensors back to back).

    Args:
        path: the ``.safetensors`` file.
        captions: the distinct captions, in the bank's order.
        member: a caption's member bytes (:func:`prompt_member_bytes`).
        encoder: what made them (:meth:`~omniforcing.data.prompt_encoding.PromptFeatureEncoder.description`).
    """
    if UNCONDITIONAL not in captions:
        raise ValueError("a prompt bank must hold the unconditional prompt \"\"")
    entries: dict[str, dict] = {}
    end = 0
    for index, caption in enumerate(captions):
        header, _ = safetensors_header(member(caption))
        for stream in ("video", "audio"):
            begin, stop = header[stream]["data_offsets"]
            entries[f"{stream}.{index}"] = {"dtype": header[stream]["dtype"], "shape": header[stream]["shape"],
                                            "data_offsets": [end, end + stop - begin]}
            end += stop - begin
    entries["__metadata__"] = {"format": BANK_FORMAT, "captions": json.dumps(captions),
                               "encoder": json.dumps(encoder, sort_keys=True)}
    head = json.dumps(entries).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        file.write(struct.pack("<Q", len(head)) + head)
        for caption in captions:
            data = member(caption)
            header, start = safetensors_header(data)
            for stream in ("video", "audio"):
                begin, stop = header[stream]["data_offsets"]
                file.write(data[start + begin:start + stop])
    os.replace(partial, path)


def save_prompt_bank(path: Path, bank: dict[str, PromptFeatures], encoder: dict) -> None:
    """Write ``bank`` (caption -> features, ``""`` included) as a bank file (:func:`write_prompt_bank`)."""
    write_prompt_bank(path, list(bank), lambda caption: prompt_member_bytes(caption, bank[caption]), encoder)


def pad_batch(rows: list[PromptFeatures], device: torch.device, dtype: torch.dtype) -> TextContext:
    """Per-stream ``(B, L, D)`` features padded with zeros to the longest row, mask ``(B, L)`` False there."""
    longest = max(row.video.shape[0] for row in rows)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool, device=device)
    streams = []
    for stream in ("video", "audio"):
        width = getattr(rows[0], stream).shape[1]
        tokens = torch.zeros(len(rows), longest, width, dtype=dtype, device=device)
        for index, row in enumerate(rows):
            features = getattr(row, stream)
            tokens[index, :features.shape[0]] = features.to(device, dtype)
            mask[index, :features.shape[0]] = True
        streams.append(TextEmbedding(tokens, mask))
    return TextContext(*streams)


class PromptBank(nn.Module):
    """Captions -> LTX-2 text features, looked up in precomputed features (no encoder weights at all).

    Satisfies :class:`omniforcing.models.ltx2.text.PromptEncoder`. Features come back on the device and in the
    floating dtype of the module (``bank.to("cuda", torch.bfloat16)``, or those of the model owning it); the
    features themselves are no parameters or state: a checkpoint holds only the path.

    Args:
        path: a bank file (``prompts.safetensors`` of a latent-shard folder, or ``data encode-prompts --out``),
            or a latent-shard folder written by ``data encode --text-encoder``: its bank file, else the
            ``prompt.safetensors`` members of its shards (read when looked up; they lack ``""``, which caption
            dropout needs).

    Raises:
        MissingInputError: ``path`` does not exist or holds no prompt features.
        InvalidInputError: ``path`` is a file but not a prompt bank.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._index: dict[str, int] = {}  # caption -> entry of the bank file
        self._members: dict[str, MemberLocation] = {}  # caption -> its member in a shard (no bank file)
        self._bank_file: Path | None = None
        # An empty buffer: ``.to(device, dtype)`` of the owning model moves it, and features follow it.
        self.register_buffer("placement", torch.zeros(0), persistent=False)
        self._open(self.path)
        first = self._features([next(iter(self._index or self._members))])[0]
        self.width, self.audio_width = first.video.shape[1], first.audio.shape[1]

    def _open(self, path: Path) -> None:
        if path.is_dir() and (path / BANK_NAME).is_file():
            path = path / BANK_NAME
        if not path.exists():
            raise MissingInputError(f"{path}: no such prompt bank or latent-shard folder; write one with `omniforcing "
                                    "data encode --text-encoder PATH` or `omniforcing data encode-prompts`")
        if path.is_file():
            self._bank_file = path
            try:
                with safe_open(str(path), framework="pt") as bank:
                    metadata = bank.metadata() or {}
            except SafetensorError:
                metadata = {}
            if metadata.get("format") != BANK_FORMAT:
                raise InvalidInputError(f"{path} is not a prompt bank (written by `omniforcing data encode "
                                        "--text-encoder` or `omniforcing data encode-prompts`)")
            self._index = {caption: index for index, caption in enumerate(json.loads(metadata["captions"]))}
        elif path.is_dir():
            for shard in sorted(path.glob("*.tar")):
                self._members = {**index_shard_prompts(shard), **self._members}
        if not (self._index or self._members):
            raise MissingInputError(f"no prompt features at {path}: write them with `omniforcing data encode "
                                    "--text-encoder PATH` (latent shards) or `omniforcing data encode-prompts`")

    @property
    def captions(self) -> list[str]:
        """Every caption the bank holds."""
        return list(self._index or self._members)

    def _missing(self, caption: str) -> MissingInputError:
        shown = caption if len(caption) <= 80 else caption[:77] + "..."
        what = "the unconditional prompt \"\"" if caption == UNCONDITIONAL else f"caption {shown!r}"
        return MissingInputError(f"{what} is not in the prompt bank {self.path} ({len(self.captions)} "
                                 f"captions); {ENCODE_HINT}")

    def _features(self, captions: list[str]) -> list[PromptFeatures]:
        for caption in captions:
            if caption not in (self._index if self._bank_file else self._members):
                raise self._missing(caption)
        if self._bank_file is None:
            return [read_prompt_member(self._members[caption].read())[1] for caption in captions]
        with safe_open(str(self._bank_file), framework="pt") as bank:  # opened per call: the module stays copyable
            return [PromptFeatures(bank.get_tensor(f"video.{self._index[caption]}"),
                                   bank.get_tensor(f"audio.{self._index[caption]}")) for caption in captions]

    def forward(self, captions: list[str], drop: Tensor | None = None) -> TextContext:
        """Features of ``B`` captions, padded to the longest: ``(B, L, width)`` / ``(B, L, audio_width)``, mask
        ``(B, L)``; rows where ``drop`` ``(B,)`` is True get the unconditional prompt ``""``."""
        if drop is not None:
            captions = [UNCONDITIONAL if dropped else caption for caption, dropped in zip(captions, drop.tolist(),
                                                                                          strict=True)]
        unique = list(dict.fromkeys(captions))
        found = dict(zip(unique, self._features(unique), strict=True))
        return pad_batch([found[caption] for caption in captions], self.placement.device, self.placement.dtype)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, captions={len(self.captions)}, width={self.width}"
