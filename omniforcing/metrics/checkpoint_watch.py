"""Finding checkpoints to evaluate while a run trains, and remembering which were evaluated.

Used by ``omniforcing evaluate --watch``. A checkpoint *version* is a file as it is at one moment: its path,
size and modification time. ``last.ckpt`` is rewritten in place during training, so each rewrite is a new
version; since ``last.ckpt`` and ``stepNNNNNNN.ckpt`` of the same step hold the same weights, a version whose
global step was already evaluated in the run is recorded as a duplicate instead of being evaluated again.

Half-written files are never read: training writes checkpoints to a temporary name and renames them
(:class:`~omniforcing.training.checkpoints.AtomicCheckpointIO`; the temporary names do not end in ``.ckpt``),
and a version is only taken when two stats ``settle`` seconds apart agree, which also covers writers that are
not atomic.

The state file ``RUN/eval/evaluated.json`` (written atomically) maps version keys to records::

    {"checkpoints": {"checkpoints/last.ckpt@<mtime_ns>:<size>": {"path": "checkpoints/last.ckpt",
        "global_step": 200, "status": "evaluated" | "duplicate" | "failed", "metrics": {...}, "error": "...",
        "time": "2025-..."}}}

Failed versions are retried when the watcher restarts (the failure may have been an environment problem),
never twice within one watcher process.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

STATE_NAME = "evaluated.json"
EVAL_DIR = "eval"
Status = Literal["evaluated", "duplicate", "failed"]


@dataclass(frozen=True)
class CheckpointVersion:
    """One checkpoint file as it was when seen.

    Args:
        path: the file.
        size: size in bytes.
        mtime_ns: modification time in nanoseconds.
    """

    path: Path
    size: int
    mtime_ns: int

    def key(self, run_dir: Path) -> str:
        """State-file key: path relative to the run, modification time and size."""
        return f"{self.path.relative_to(run_dir).as_posix()}@{self.mtime_ns}:{self.size}"


def find_run_dirs(root: str | Path) -> list[Path]:
    """Run folders under ``root``: ``root`` itself when it has ``checkpoints/``, else every folder below with one.

    ``eval`` folders (the watcher's own output) are not searched.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist")
    if (root / "checkpoints").is_dir():
        return [root]
    return sorted(p.parent for p in root.rglob("checkpoints")
                  if p.is_dir() and EVAL_DIR not in p.relative_to(root).parts[:-1])


def _stat(path: Path) -> CheckpointVersion | None:
    try:
        info = path.stat()
    except FileNotFoundError:  # removed (e.g. by ModelCheckpoint's top-k) between listing and stat
        return None
    return CheckpointVersion(path, info.st_size, info.st_mtime_ns)


def stable_checkpoints(run_dirs: list[Path], settle: float) -> dict[Path, list[CheckpointVersion]]:
    """The ``*.ckpt`` versions of each run's ``checkpoints/`` that did not change over ``settle`` seconds.

    Returns:
        run folder -> versions sorted by modification time (oldest first).
    """
    first = {run: [v for p in sorted((run / "checkpoints").glob("*.ckpt")) if (v := _stat(p)) is not None]
             for run in run_dirs}
    if settle > 0 and any(first.values()):
        time.sleep(settle)
    stable = {}
    for run, versions in first.items():
        stable[run] = sorted((v for v in versions if _stat(v.path) == v), key=lambda v: (v.mtime_ns, v.path.name))
    return stable


def read_global_step(path: str | Path) -> int:
    """The ``global_step`` saved in a Lightning checkpoint (weights-only load, memory-mapped)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if "global_step" not in checkpoint:
        raise ValueError(f"{path} has no global_step: not a Lightning checkpoint")
    return int(checkpoint["global_step"])


class EvaluationState:
    """The watcher's memory of one run (``RUN/eval/evaluated.json``).

    Args:
        run_dir: the run folder (holding ``checkpoints/``).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / EVAL_DIR / STATE_NAME
        self.records: dict[str, dict[str, Any]] = {}
        self.failed_now: set[str] = set()
        if self.path.is_file():
            try:
                self.records = dict(json.loads(self.path.read_text())["checkpoints"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"unreadable watcher state {self.path}: {error}; "
                                 "move it away to start over") from error

    def is_done(self, version: CheckpointVersion) -> bool:
        """Evaluated or recorded as a duplicate before, or failed in this process."""
        key = version.key(self.run_dir)
        record = self.records.get(key)
        return key in self.failed_now or (record is not None and record["status"] != "failed")

    def evaluated_step(self, step: int) -> str | None:
        """Key of the evaluated version with this global step, if any."""
        return next((key for key, r in self.records.items() if r["status"] == "evaluated" and r["global_step"] == step),
                    None)

    def record(self, version: CheckpointVersion, step: int, status: Status, *, metrics: dict[str, float] | None = None,
               error: str | None = None, same_as: str | None = None) -> None:
        """Remember a version's outcome and write the state file."""
        key = version.key(self.run_dir)
        entry: dict[str, Any] = {"path": version.path.relative_to(self.run_dir).as_posix(), "global_step": step,
                                 "status": status, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if metrics is not None:
            entry["metrics"] = metrics
        if error is not None:
            entry["error"] = error
            self.failed_now.add(key)
        if same_as is not None:
            entry["same_as"] = same_as
        self.records[key] = entry
        self.save()

    def save(self) -> None:
        """Write the state atomically (temporary file + rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"checkpoints": self.records}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
