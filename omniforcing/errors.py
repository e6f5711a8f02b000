"""Errors the user can fix, which the command line reports as one line (exit code 2) instead of a traceback.

Only these types are turned into one line by :func:`omniforcing.cli.main`; anything else is a bug and keeps its
traceback. The two subclasses are also ``FileNotFoundError`` / ``ValueError``, so library callers that catch the
built-in families keep working. ``--debug`` or ``OMNIFORCING_DEBUG=1`` shows the traceback of a user error too.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for: a missing path, an unknown name, a value out of range, a file that
    is not what it should be. The message says what is wrong and, where it helps, what to do instead."""


class MissingInputError(UserError, FileNotFoundError):
    """A file, folder or name given by the user does not exist."""


class InvalidInputError(UserError, ValueError):
    """A value or a file given by the user cannot be used (out of range, unreadable, of the wrong kind)."""


def check_positive(**values: float | None) -> None:
    """Raise :class:`InvalidInputError` naming the first flag whose value is given and not > 0.

    Keyword names are parameter names; the message spells them as the command-line flag (``--shard-size``).
    """
    for name, value in values.items():
        if value is not None and not value > 0:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be > 0, got {value}")
