"""``omniforcing data encode-prompts``: prompt features for streaming, without the text encoder at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from omniforcing.errors import InvalidInputError, MissingInputError


def encode_prompts(*, text_encoder: Path, prompts: Path, out: Path, device: str = "cpu",
                   text_dtype: Literal["bfloat16", "float32"] = "bfloat16", text_max_length: int = 1024,
                   batch_size: int = 8) -> None:
    """Encode prompts (one per line) into a prompt bank file that ``PromptBank`` reads (docs/data.md).

    The bank always holds the unconditional prompt "" as well. Use it for prompts that are not captions of the
    training data (streaming, evaluation); the training data's captions are in the bank ``data encode
    --text-encoder`` writes into its latent-shard folder.

    Args:
        text_encoder: a local folder: LTX-2's ``text_encoder/``, ``tokenizer/`` and ``connectors/`` (Gemma-3 + its
            connectors), or any transformers encoder (``AutoModel`` + ``AutoTokenizer``).
        prompts: a text file, one prompt per line (blank lines are skipped).
        out: the bank file to write (``.safetensors``).
        device: where the text encoder runs (``cpu``, ``cuda``).
        text_dtype: compute dtype of the text encoder (features are stored as bfloat16).
        text_max_length: tokens per prompt (LTX-2's ``max_sequence_length``, a multiple of 128).
        batch_size: prompts encoded at once.
    """
    if Path(out).suffix != ".safetensors":
        raise InvalidInputError(f"--out {out}: a prompt bank is a .safetensors file")
    if not Path(prompts).is_file():
        raise MissingInputError(f"--prompts {prompts}: no such file (one prompt per line)")
    from omniforcing.data.prompt_encoding import CaptionFeatures, PromptFeatureEncoder  # loads diffusers

    lines = [line.strip() for line in Path(prompts).read_text(encoding="utf-8").splitlines()]
    bank = CaptionFeatures(PromptFeatureEncoder(text_encoder, device, text_dtype, text_max_length), batch_size)
    bank.add(line for line in lines if line)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    bank.save(Path(out))
    print(f"encoded {len(bank.held)} prompts (\"\" included) with {text_encoder} into {out}")
