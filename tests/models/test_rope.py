"""RoPE in physical seconds: relative scores, identity rows for sinks, time shifts."""

from __future__ import annotations

import torch

from omniforcing.models.rope import RotaryEmbedding, apply_rope


def _rotated(rope: RotaryEmbedding, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return apply_rope(x, rope.tables(positions, dtype=torch.float64))


def test_scores_depend_only_on_relative_time():
    rope = RotaryEmbedding(16, (20.0,))
    q, k = torch.randn(2, 1, 16, dtype=torch.float64).unbind(0)
    for offset in (0.0, 3.7, 95.0):
        later = torch.tensor([[offset + 1.25]], dtype=torch.float64)
        score = (_rotated(rope, q, later) * _rotated(rope, k, torch.tensor([[offset]], dtype=torch.float64))).sum()
        reference = (_rotated(rope, q, torch.tensor([[1.25]])) * _rotated(rope, k, torch.tensor([[0.0]]))).sum()
        torch.testing.assert_close(score, reference)


def test_identity_rows_do_not_rotate_and_position_zero_is_not_identity():
    rope = RotaryEmbedding(16, (20.0,))
    tables = rope.tables(torch.zeros(3, 1), identity=torch.tensor([True, True, False]))
    assert torch.equal(tables.cos[:2], torch.ones(2, 8)) and torch.equal(tables.sin[:2], torch.zeros(2, 8))
    assert tables.sin[2].abs().max() > 0.1  # fractional RoPE: position 0 maps to angle -theta, not 0
    x = torch.randn(3, 16)
    assert torch.equal(apply_rope(x, tables)[:2], x[:2])


def test_time_shift_moves_only_the_time_axis():
    rope = RotaryEmbedding(18, (20.0, 4.0, 4.0))  # 9 pairs: 3 per axis
    x = torch.randn(5, 18, dtype=torch.float64)
    positions = torch.rand(5, 3, dtype=torch.float64) * 4
    shifted = apply_rope(_rotated(rope, x, positions), rope.time_shift(7.5, torch.device("cpu"), torch.float64))
    moved = positions.clone()
    moved[:, 0] += 7.5
    torch.testing.assert_close(shifted, _rotated(rope, x, moved))


def test_odd_or_too_small_heads_are_rejected():
    for head_dim, axes in ((15, (1.0,)), (4, (1.0, 1.0, 1.0))):
        try:
            RotaryEmbedding(head_dim, axes)
        except ValueError:
            continue
        raise AssertionError(f"head_dim {head_dim} with {len(axes)} axes was accepted")


def test_compiled_rope_rotates_real_pairs_like_the_eager_complex_product():
    """Inside torch.compile the rotation is written on real pairs (inductor generates no code for complex
    operators); the traced graph holds no complex tensor and agrees with eager to float32 rounding."""
    rope = RotaryEmbedding(32, (20.0, 4.0, 4.0))
    tables = rope.tables(torch.rand(48, 3) * 4, identity=torch.arange(48) < 5)
    x = torch.randn(1, 4, 48, 32).to(torch.bfloat16)
    dtypes = set()

    def recording_backend(graph_module, example_inputs):
        dtypes.update(node.meta["example_value"].dtype for node in graph_module.graph.nodes
                      if isinstance(node.meta.get("example_value"), torch.Tensor))
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(apply_rope, backend=recording_backend, fullgraph=True)(x, tables)
    assert dtypes and not any(d.is_complex for d in dtypes)
    eager = apply_rope(x, tables)
    assert compiled.dtype == eager.dtype == torch.bfloat16
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=0, atol=1e-2)  # bf16 rounding of the output
    exact = apply_rope(x.float(), tables)
    torch.testing.assert_close(torch.compile(apply_rope, backend="aot_eager")(x.float(), tables), exact,
                               rtol=0, atol=1e-6)
