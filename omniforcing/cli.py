"""The ``omniforcing`` command line.

``fit|validate|test|predict`` go to LightningCLI (:class:`omniforcing.training.cli.OmniCLI`); every other
subcommand is a typed function turned into a subcommand by jsonargparse, so its signature and docstring are
its ``--help``. The command contract lives in DESIGN.md and docs use exactly these names.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

# subcommand path -> "module:function"; functions take keyword-only arguments (named flags) and
# positional ones where the contract has a positional (e.g. ``data pack SRC``).
COMMANDS: dict[str, str] = {
    "data synth": "omniforcing.commands.data:synth",
    "data pack": "omniforcing.commands.data:pack",
    "data inspect": "omniforcing.commands.data:inspect",
    "data ode-pairs": "omniforcing.commands.ode_pairs:ode_pairs",
    "data encode": "omniforcing.commands.codec:encode",
    "data codec-stats": "omniforcing.commands.codec:codec_stats",
    "codec export": "omniforcing.commands.codec:export_codec",
    "generate": "omniforcing.commands.generate:generate",
    "serve": "omniforcing.commands.serve:serve",
    "export": "omniforcing.commands.export:export",
    "bench": "omniforcing.commands.bench:bench",
    "evaluate": "omniforcing.commands.evaluate:evaluate",
}


def _load(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _command_tree() -> dict:
    tree: dict = {}
    for path, target in COMMANDS.items():
        node = tree
        *parents, leaf = path.split()
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _load(target)
    return tree


FLAG_ALIASES = {"in": "source"}
"""Contract flags that are Python keywords, and the parameter names they stand for (``data encode --in``)."""


def _underscore_flags(argv: list[str]) -> list[str]:
    """``--shard-size 2`` -> ``--shard_size 2``: the contract's dashed flags map onto Python parameter names."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            name = FLAG_ALIASES.get(name, name)
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


def main(args: Sequence[str] | None = None) -> None:
    """Run the ``omniforcing`` command line (``args`` defaults to ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        from omniforcing.training.cli import run_lightning_cli

        # LightningCLI reads sys.argv itself; called from Python (pipelines, demo, tests) it would warn about
        # mixing ``args`` with the caller's own flags, so the explicit arguments stand in for sys.argv meanwhile.
        saved = sys.argv
        sys.argv = [saved[0] if saved else "omniforcing", *argv]
        try:
            run_lightning_cli(None)
        finally:
            sys.argv = saved
        return
    from jsonargparse import CLI

    CLI(_command_tree(), args=_underscore_flags(argv), as_positional=True)


if __name__ == "__main__":
    main()
