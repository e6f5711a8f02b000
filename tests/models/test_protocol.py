"""The backbone protocol: DualStreamTransformer satisfies AVBackbone (members and call signatures), and no
caller outside ``omniforcing/models/`` tests for a concrete backbone class (issue 13, item 1)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import torch

import omniforcing
from omniforcing.models.protocol import AVBackbone
from omniforcing.models.transformer import DualStreamTransformer

PACKAGE = Path(omniforcing.__file__).parent
METHODS = ("layout", "encode_text", "new_cache", "forward", "compile_core")
CONCRETE = {"DualStreamTransformer"}


def signature_mismatches(cls: type, protocol: type = AVBackbone) -> list[str]:
    """Methods of ``cls`` whose parameters differ from the protocol's: every protocol parameter, in order, with
    the same name and kind; any extra parameter of ``cls`` must have a default (callers never pass it)."""
    problems = []
    for name in METHODS:
        if not callable(getattr(cls, name, None)):
            problems.append(f"{name}: missing")
            continue
        wanted = list(inspect.signature(getattr(protocol, name)).parameters.values())
        got = list(inspect.signature(getattr(cls, name)).parameters.values())
        if [(p.name, p.kind) for p in got[:len(wanted)]] != [(p.name, p.kind) for p in wanted]:
            problems.append(f"{name}: {[p.name for p in got]} vs {[p.name for p in wanted]}")
        problems += [f"{name}: extra {p.name} has no default" for p in got[len(wanted):]
                     if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return problems


def concrete_type_checks(source: str, names: set[str] = CONCRETE) -> list[int]:
    """Lines where ``isinstance`` / ``issubclass`` / ``type(..) is`` tests for one of ``names``."""

    def mentions(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Name) and n.id in names or isinstance(n, ast.Attribute) and n.attr in names
                   for n in ast.walk(node))

    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2 and mentions(node.args[1])):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot, ast.Eq, ast.NotEq))
                                                    for op in node.ops)
              and any(isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "type"
                      for c in [node.left, *node.comparators])
              and any(mentions(c) for c in [node.left, *node.comparators])):
            lines.append(node.lineno)
    return lines


def test_dual_stream_transformer_is_a_backbone(make_model):
    model = make_model(perturb=False)
    assert isinstance(model, AVBackbone)
    assert signature_mismatches(DualStreamTransformer) == []


def test_protocol_members_report_the_model(make_model):
    model = make_model(perturb=False, depth=3).to(torch.float64)
    assert model.depth == 3 and model.dtype == torch.float64 and model.device == torch.device("cpu")
    cache = model.new_cache(2, window_seconds=2.0, prefix_position="relative")
    assert cache.prefix_position == "relative" and model.new_cache(1).prefix_position == model.prefix_position


def test_the_protocol_checks_can_fail():
    class RenamedForward(DualStreamTransformer):
        def forward(self, video, audio, t_video, t_audio, text_context, *, causal=None):
            return super().forward(video, audio, t_video, t_audio, text_context, causal=causal)

    class NoCompile:
        pass

    assert not isinstance(object(), AVBackbone)
    # isinstance sees member names only, so a renamed parameter is caught by the signature check
    assert any(p.startswith("forward:") for p in signature_mismatches(RenamedForward))
    assert "compile_core: missing" in signature_mismatches(NoCompile)


def test_checker_finds_concrete_type_tests():
    source = ("if isinstance(net, DualStreamTransformer): pass\n"
              "ok = isinstance(net, (nn.Linear, models.DualStreamTransformer))\n"
              "same = type(net) is DualStreamTransformer\n"
              "fine = isinstance(net, AVBackbone)\n")
    assert concrete_type_checks(source) == [1, 2, 3]


def test_no_caller_tests_for_a_concrete_backbone():
    callers = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "models"]
    assert len(callers) > 50  # the walk found the package
    offenders = {str(p.relative_to(PACKAGE)): lines for p in callers if (lines := concrete_type_checks(p.read_text()))}
    assert offenders == {}, "test for omniforcing.models.protocol.AVBackbone instead"
