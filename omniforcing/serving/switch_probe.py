"""How many blocks a mid-stream prompt switch takes to show (docs/serving.md, "Prompt switching").

Three streams with the same seed: ``A`` keeps the old prompt, ``B`` switches to the new one at block ``k``
(through the prompt callable the server uses), ``C`` has the new prompt from the start. Per block, the
distance of ``B`` to ``A`` over the distance of ``C`` to ``A`` says how much of the new prompt's effect has
shown: exactly 0 before ``k`` (same noise, same prompt), then rising. The distance of ``B`` to ``C`` over that
of ``A`` to ``C`` says how far ``B`` still is from a stream that had the new prompt all along (1 before ``k``;
it stays above 0 because ``B``'s history was made under the old prompt).

Run: ``python -m omniforcing.serving.switch_probe --checkpoint student --before "..." --after "..."``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from omniforcing.inference.streaming import Prompt, StreamingGenerator


@dataclass
class SwitchDistance:
    """Distances of one block (RMS over its clean latents, video and audio together).

    Args:
        index: block index.
        switched_to_old: RMS(B - A).
        new_to_old: RMS(C - A): the whole effect of the new prompt on this block.
        switched_to_new: RMS(B - C).
    """

    index: int
    switched_to_old: float
    new_to_old: float
    switched_to_new: float

    @property
    def shown(self) -> float:
        """Share of the new prompt's effect that has shown: RMS(B - A) / RMS(C - A)."""
        return self.switched_to_old / self.new_to_old

    @property
    def remaining(self) -> float:
        """Distance left to the new prompt's own stream: RMS(B - C) / RMS(A - C)."""
        return self.switched_to_new / self.new_to_old


def _block_latents(generator: StreamingGenerator, prompt: Prompt, seconds: int, seed: int) -> list[Tensor]:
    """``(n,)`` flattened clean latents of every block (video and audio concatenated)."""
    return [torch.cat([t.flatten().float() for t in (b.latents.video, b.latents.audio) if t is not None])
            for b in generator.latent_blocks(prompt, seconds, seed)]


def prompt_switch_distances(generator: StreamingGenerator, before: str, after: str, switch_block: int,
                            seconds: int, seed: int = 0) -> list[SwitchDistance]:
    """Per-block distances of streams ``A`` (``before``), ``B`` (switched at ``switch_block``), ``C`` (``after``)."""
    if not 0 < switch_block < generator.num_blocks(seconds):
        raise ValueError(f"switch_block must be in 1..{generator.num_blocks(seconds) - 1}, got {switch_block}")
    old = _block_latents(generator, before, seconds, seed)
    switched = _block_latents(generator, lambda index: after if index >= switch_block else before, seconds, seed)
    new = _block_latents(generator, after, seconds, seed)

    def rms(x: Tensor, y: Tensor) -> float:
        return float((x - y).pow(2).mean().sqrt())

    return [SwitchDistance(i, rms(b, a), rms(c, a), rms(b, c)) for i, (a, b, c) in enumerate(zip(old, switched, new))]


def print_switch_table(*, checkpoint: str, before: str, after: str, switch_block: int = 4, seconds: int = 12,
                       seed: int = 0, window: float | None = None) -> None:
    """Print the per-block table of :func:`prompt_switch_distances` (markdown).

    Args:
        checkpoint: causal student (path or reference name).
        before: the prompt before the switch.
        after: the prompt after it.
        switch_block: first block generated with ``after``.
        seconds: stream length after the lead frame.
        seed: noise seed of all three streams.
        window: KV-cache window in seconds (default: the model's).
    """
    from omniforcing.commands.generate import resolve_checkpoint

    torch.set_num_threads(1)
    generator = StreamingGenerator.from_pretrained(resolve_checkpoint(checkpoint), window_seconds=window)
    rows = prompt_switch_distances(generator, before, after, switch_block, seconds, seed)
    print("| block | RMS(B-A) | RMS(C-A) | shown = RMS(B-A)/RMS(C-A) | remaining = RMS(B-C)/RMS(C-A) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.index} | {row.switched_to_old:.4f} | {row.new_to_old:.4f} | {row.shown:.3f} | "
              f"{row.remaining:.3f} |")


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(print_switch_table, as_positional=False)
