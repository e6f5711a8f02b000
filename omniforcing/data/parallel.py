"""Ordered parallel map over worker processes, used by the shard builders.

Workers are forked (as DataLoader workers are), so they also start from notebooks and ``python -`` scripts,
which ``spawn`` cannot re-import; each worker uses one torch thread (torch marks a forked child and does not
reuse the parent's thread pool). Results come back in input order, so the shards a command writes do not
depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers(jobs: int, per_worker: int = 4) -> int:
    """A worker count for ``jobs`` tasks: none for small jobs (start-up costs ~1 s), else up to the CPU count."""
    return min(os.cpu_count() or 1, jobs // per_worker) if jobs >= 2 * per_worker else 0


def map_ordered(function: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """Apply a picklable ``function`` to each item, yielding results in input order.

    Args:
        function: a module-level function (it is sent to the workers by reference).
        items: the inputs.
        workers: worker processes; 0 runs everything in this process.
    """
    if workers <= 0:
        yield from map(function, items)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_limit_threads) as pool:
        yield from pool.imap(function, items, chunksize=1)


def _limit_threads() -> None:
    # Each worker handles one clip at a time; intra-op threads would only fight over the same cores.
    import torch

    torch.set_num_threads(1)
