"""The ``omniforcing`` command line.

``fit|validate|test|predict`` go to LightningCLI (:class:`omniforcing.training.cli.OmniCLI`); every other
subcommand is a typed function turned into a subcommand by jsonargparse, so its signature and docstring are
its ``--help``. The command contract lives in DESIGN.md and docs use exactly these names.

Error contract: an expected user error — a :class:`~omniforcing.errors.UserError` raised by a command, or a
command-line / recipe value the parser rejects — ends the program with one line ``error: ...`` on stderr and
exit code 2. Anything else is a bug and keeps its traceback. ``--debug`` (anywhere on the command line) or
``OMNIFORCING_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from jsonargparse import ArgumentError

from omniforcing.errors import UserError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

# subcommand path -> "module:function"; functions take keyword-only arguments (named flags) and
# positional ones where the contract has a positional (e.g. ``data pack SRC``).
COMMANDS: dict[str, str] = {
    "data synth": "omniforcing.commands.data:synth",
    "data pack": "omniforcing.commands.data:pack",
    "data inspect": "omniforcing.commands.data:inspect",
    "data ode-pairs": "omniforcing.commands.ode_pairs:ode_pairs",
    "data encode": "omniforcing.commands.codec:encode",
    "data encode-prompts": "omniforcing.commands.prompts:encode_prompts",
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


USER_ERROR_EXIT_CODE = 2
"""Exit code of a user error (the same as jsonargparse's for a bad flag)."""

DEBUG_FLAG = "--debug"
DEBUG_ENV = "OMNIFORCING_DEBUG"


def one_line(message: str) -> str:
    """``message`` with its line breaks and indentation collapsed to single spaces."""
    return " ".join(message.split())


UNION_FAILURE = "Does not validate against any of the Union subtypes"


def parser_message(message: str) -> str:
    """A jsonargparse error as one line, without what restates the input.

    A value that fits no alternative of ``SomeClass | None`` (every ``class_path`` argument) is reported with
    the subtypes, one reason per alternative and the given value; only the reasons that are not "Expected a
    <class 'NoneType'>" say what is wrong (``Option 'depht' is not accepted``).
    """
    if UNION_FAILURE not in message:
        return one_line(message)
    head, _, rest = message.partition(UNION_FAILURE)
    errors = rest.partition("Errors:")[2].partition("Given value type:")[0]
    reasons = [one_line(reason) for reason in re.split(r"\n\s*- ", errors)
               if reason.strip() and "Expected a <class 'NoneType'>" not in reason]
    return f"{one_line(head)} {'; '.join(reasons)}" if reasons else one_line(message)


@contextmanager
def user_errors_as_one_line(debug: bool) -> Iterator[None]:
    """Turn :class:`UserError` and parser errors into ``error: ...`` on stderr and exit code 2 (unless ``debug``).

    Only these expected types are caught: any other exception is a bug and propagates with its traceback.
    """
    try:
        yield
    except (UserError, ArgumentError) as error:
        if debug:
            raise
        if isinstance(error, ArgumentError):
            message = f"{parser_message(str(error))} (--help lists the options)"
        else:
            message = one_line(str(error))
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


def main(args: Sequence[str] | None = None) -> None:
    """Run the ``omniforcing`` command line (``args`` defaults to ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    with user_errors_as_one_line(debug):
        _run(argv, debug)


def _run(argv: list[str], debug: bool) -> None:
    """Dispatch to LightningCLI or the command functions; parsers raise instead of exiting unless ``debug``."""
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        from omniforcing.training.cli import check_recipe_order, run_lightning_cli

        check_recipe_order(argv[1:])
        # LightningCLI reads sys.argv itself; called from Python (pipelines, demo, tests) it would warn about
        # mixing ``args`` with the caller's own flags, so the explicit arguments stand in for sys.argv meanwhile.
        saved = sys.argv
        sys.argv = [saved[0] if saved else "omniforcing", *argv]
        try:
            run_lightning_cli(None, exit_on_error=debug)
        finally:
            sys.argv = saved
        return
    from jsonargparse import CLI

    CLI(_command_tree(), args=_underscore_flags(argv), as_positional=True, exit_on_error=debug)


if __name__ == "__main__":
    main()
