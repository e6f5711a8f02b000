"""SIGTERM ends a bench run within seconds, with what it measured kept.

By default Python dies on SIGTERM without running ``finally`` blocks, and inside ``trainer.fit`` Lightning
swallows it: its handler only sets ``trainer.received_sigterm`` and raises ``SIGTERMException`` (a
``SystemExit``) at the next batch boundary. :func:`stop_on_sigterm` installs a handler that raises
:class:`BenchInterrupted` in the main thread at once. Lightning keeps a handler it finds and calls it after
its own, so the exception also leaves a running ``trainer.fit`` (whose teardown restores this handler). It
derives from ``BaseException``, so a table's ``except Exception`` (:meth:`Report.measure`) does not record it as
a failed table and the run stops.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class BenchInterrupted(BaseException):
    """The bench received SIGTERM; the message is the signal's name."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise BenchInterrupted(signal.Signals(signum).name)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`BenchInterrupted` in the main thread (elsewhere a no-op:
    Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
