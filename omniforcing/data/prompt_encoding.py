"""Captions -> LTX-2 prompt features, from a local text-encoder folder (``data encode --text-encoder PATH``).

Two kinds of folder (nothing is downloaded: every load is ``local_files_only=True``):

* **LTX-2** (``text_encoder/``, ``tokenizer/``, ``connectors/``, as in the Hugging Face repo ``Lightricks/LTX-2``):
  exactly what ``diffusers.LTX2Pipeline`` gives its transformer — ``LTX2Pipeline.encode_prompt`` (Gemma-3, every
  hidden state stacked, left padding to ``max_sequence_length``) and then the ``connectors`` call of
  ``LTX2Pipeline.__call__`` (per-stream connector outputs and their mask). The pipeline's own methods are called
  on a pipeline that holds only these three components.
* **any local encoder**: a folder with a transformers ``AutoModel`` and ``AutoTokenizer`` (``config.json`` at its
  top; the encoder half of an encoder-decoder model). Its last hidden state is the feature of **both** streams;
  the backbone's ``caption_channels`` must equal its hidden size.

Either way each caption's features keep only the tokens the mask marks real (the transformer masks the rest), and
are stored in bfloat16 (:mod:`omniforcing.models.ltx2.prompt_bank`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from omniforcing.errors import InvalidInputError, MissingInputError, check_positive
from omniforcing.models.ltx2.prompt_bank import (
    BANK_NAME,
    PROMPT_MEMBER,
    UNCONDITIONAL,
    MemberLocation,
    PromptFeatures,
    index_shard_prompts,
    prompt_member_bytes,
    write_prompt_bank,
)

TextDtype = Literal["bfloat16", "float32"]
LTX2_FILES = {"text_encoder": ("config.json",), "tokenizer": ("tokenizer.json", "tokenizer_config.json"),
              "connectors": ("config.json",)}
LTX2_PARTS = tuple(LTX2_FILES)
LTX2_SOURCE = "the Hugging Face repo Lightricks/LTX-2"


def check_text_encoder_folder(path: Path) -> Literal["ltx2", "auto"]:
    """Which kind of folder ``path`` is (module docstring), or a one-line :class:`MissingInputError` naming what to
    download and where to put it."""
    layout = f"either {'/, '.join(LTX2_PARTS)}/ from {LTX2_SOURCE}, or a transformers encoder (config.json + tokenizer)"
    if not path.is_dir():
        raise MissingInputError(f"--text-encoder {path}: no such folder; download {layout} into it")
    if any((path / part).exists() for part in LTX2_PARTS):
        for part, files in LTX2_FILES.items():
            if not any((path / part / name).is_file() for name in files):
                raise MissingInputError(f"--text-encoder {path}: no {part}/ folder with {' or '.join(files)}; "
                                        f"download {part}/ from {LTX2_SOURCE} into {path / part}")
        return "ltx2"
    if (path / "config.json").is_file():
        return "auto"
    raise MissingInputError(f"--text-encoder {path}: neither an LTX-2 folder nor a transformers model; put {layout} "
                            "there")


def trim(tokens: Tensor, mask: Tensor) -> Tensor:
    """Rows of ``tokens`` ``(L, D)`` where ``mask`` ``(L,)`` is set, in order (padding removed)."""
    return tokens[mask.bool()]


class PromptFeatureEncoder:
    """A local text encoder folder, loaded once, turning captions into :class:`PromptFeatures`.

    Args:
        path: the folder (LTX-2 layout or a transformers encoder, module docstring).
        device: where the encoder runs.
        dtype: its compute dtype (LTX-2 runs Gemma-3 and the connectors in bfloat16).
        max_length: tokens per caption: LTX-2's ``max_sequence_length`` (the pipeline's default 1024; with the
            connectors' learnable registers every one of them is kept, so it sets the stored size, and it must be a
            multiple of their number of registers, 128), or the truncation length of another encoder.

    Raises:
        MissingInputError: the folder, or a part of an LTX-2 folder, is missing.
    """

    def __init__(self, path: Path, device: str = "cpu", dtype: TextDtype = "bfloat16", max_length: int = 1024) -> None:
        check_positive(text_max_length=max_length)
        self.path, self.device, self.dtype, self.max_length = Path(path), torch.device(device), dtype, max_length
        self.kind = check_text_encoder_folder(self.path)
        torch_dtype = getattr(torch, dtype)
        try:
            if self.kind == "ltx2":
                self.pipeline = load_ltx2_text_pipeline(self.path, torch_dtype, self.device)
            else:
                self.model, self.tokenizer = load_auto_encoder(self.path, torch_dtype, self.device)
        except OSError as error:  # what transformers / diffusers raise for missing or unreadable weight files
            source = f"from {LTX2_SOURCE} " if self.kind == "ltx2" else ""
            raise MissingInputError(f"--text-encoder {path}: cannot load it ({' '.join(str(error).split())[:300]}); "
                                    f"download it {source}again") from error
        if self.kind == "ltx2":
            check_register_multiple(self.pipeline.connectors.config, max_length)

    def description(self) -> dict[str, Any]:
        """What makes the features (recorded in ``dataset.json`` and the bank; a re-run must match it)."""
        return {"path": str(self.path.resolve()), "kind": self.kind, "dtype": self.dtype,
                "max_length": self.max_length}

    @torch.inference_mode()
    def __call__(self, captions: list[str]) -> list[PromptFeatures]:
        """Features of each caption, padding removed (on the encoder's device, in its dtype)."""
        if self.kind == "ltx2":
            video, audio, mask = ltx2_prompt_features(self.pipeline, captions, self.max_length)
        else:
            tokens = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt").to(self.device)
            video = audio = self.model(input_ids=tokens.input_ids,
                                       attention_mask=tokens.attention_mask).last_hidden_state
            mask = tokens.attention_mask
        if not mask.bool().any(dim=1).all():
            raise InvalidInputError(f"the tokenizer of {self.path} gives no token for a caption (e.g. \"\"); use an "
                                    "encoder whose tokenizer adds a begin or end token")
        return [PromptFeatures(trim(v, m), trim(a, m)) for v, a, m in zip(video, audio, mask, strict=True)]


def check_register_multiple(config: Any, max_length: int) -> None:
    """LTX-2's connectors tile their learnable registers over the sequence: its length must be a multiple."""
    for stream in ("video", "audio"):
        registers = getattr(config, f"{stream}_connector_num_learnable_registers")
        if registers and max_length % registers:
            raise InvalidInputError(f"--text-max-length {max_length} must be a multiple of the {registers} learnable "
                                    f"registers of the {stream} connector")


def load_ltx2_text_pipeline(path: Path, dtype: torch.dtype, device: torch.device) -> Any:
    """An ``LTX2Pipeline`` holding only the Gemma-3 text encoder, its tokenizer and the connectors of ``path``.

    The text encoder is built as the class its ``config.json`` names (``Gemma3ForConditionalGeneration`` for
    LTX-2), the one ``LTX2Pipeline.from_pretrained`` builds.
    """
    import transformers
    from diffusers import LTX2Pipeline
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors

    config = transformers.AutoConfig.from_pretrained(path / "text_encoder", local_files_only=True)
    encoder_class = getattr(transformers, (config.architectures or ["AutoModel"])[0])
    text_encoder = encoder_class.from_pretrained(path / "text_encoder", dtype=dtype, local_files_only=True,
                                                 use_safetensors=True)  # never unpickle a .bin
    tokenizer = transformers.AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    connectors = LTX2TextConnectors.from_pretrained(path / "connectors", torch_dtype=dtype, local_files_only=True,
                                                    use_safetensors=True)
    return LTX2Pipeline(scheduler=None, vae=None, audio_vae=None, text_encoder=text_encoder.to(device).eval(),
                        tokenizer=tokenizer, connectors=connectors.to(device).eval(), transformer=None, vocoder=None)


def ltx2_prompt_features(pipeline: Any, captions: list[str], max_length: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(video (B, L, Dv), audio (B, L, Da), mask (B, L))``: what ``LTX2Pipeline.__call__`` passes its transformer
    as ``encoder_hidden_states``, ``audio_encoder_hidden_states`` and their attention mask, for ``captions``."""
    embeds, mask, _, _ = pipeline.encode_prompt(captions, do_classifier_free_guidance=False,
                                                max_sequence_length=max_length, device=pipeline.text_encoder.device)
    padding_side = getattr(pipeline.tokenizer, "padding_side", "left")  # as the pipeline's call reads it
    return pipeline.connectors(embeds, mask, padding_side=padding_side)


def load_auto_encoder(path: Path, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a transformers encoder folder (the encoder of an encoder-decoder model)."""
    import transformers

    model = transformers.AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True, use_safetensors=True)
    if model.config.is_encoder_decoder:
        model = model.get_encoder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.to(device).eval(), tokenizer


class CaptionFeatures:
    """Distinct captions -> ``prompt.safetensors`` members, each caption encoded once (a latent dataset repeats a
    clip's caption in every window of the clip), and the bank file of them all.

    Memory holds only the members not yet in a written shard (and ``""``); the others are read back from their
    shard when a caption recurs or the bank is written (LTX-2 at 1024 tokens: 15 MiB per caption, docs/data.md).

    Args:
        encoder: the loaded text encoder.
        batch_size: captions encoded at once.
    """

    def __init__(self, encoder: PromptFeatureEncoder, batch_size: int = 8) -> None:
        self.encoder, self.batch_size = encoder, batch_size
        self.held: dict[str, bytes] = {}  # caption -> member, not yet in a written shard
        self.written: dict[str, MemberLocation] = {}  # caption -> its member in a written shard
        self.add([UNCONDITIONAL])

    def add(self, captions: Iterable[str]) -> None:
        """Encode the captions not yet held or written."""
        new = [c for c in dict.fromkeys(captions) if c not in self.held and c not in self.written]
        for first in range(0, len(new), self.batch_size):
            batch = new[first:first + self.batch_size]
            self.held.update((c, prompt_member_bytes(c, f)) for c, f in zip(batch, self.encoder(batch), strict=True))

    def member(self, caption: str) -> bytes:
        """The ``prompt.safetensors`` member of an added caption."""
        return self.held[caption] if caption in self.held else self.written[caption].read()

    def members(self, captions: list[str]) -> list[dict[str, bytes]]:
        """``{"prompt.safetensors": bytes}`` for each of ``captions`` (encoding the new ones)."""
        self.add(captions)
        return [{PROMPT_MEMBER: self.member(caption)} for caption in captions]

    def read_shard(self, shard: Path) -> None:
        """Index the members of a written shard (this run's, or an earlier run's when resuming: not encoded again),
        and let go of the memory of those held."""
        for caption, location in index_shard_prompts(shard).items():
            self.written.setdefault(caption, location)
            if caption != UNCONDITIONAL:
                self.held.pop(caption, None)

    def save(self, path: Path) -> None:
        """Write the bank file of every caption added or read, ``""`` first."""
        captions = list(dict.fromkeys([UNCONDITIONAL, *self.written, *self.held]))
        write_prompt_bank(path, captions, self.member, self.encoder.description())

    def save_into(self, folder: Path) -> None:
        """Write the bank file of a latent-shard folder (``prompts.safetensors``, read by ``PromptBank(folder)``)."""
        self.save(folder / BANK_NAME)
