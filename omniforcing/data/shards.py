"""WebDataset shard files: writing samples, the dataset manifest, finding and listing shards.

A shard is a plain tar file ``shard-000000.tar`` holding samples; a sample is the set of members that share
a key (``00000012.mp4`` + ``00000012.json``). Keys are zero-padded running numbers without dots, because
WebDataset splits member names at the first dot. Tar members are written with a fixed integer mtime (0, so
no pax header is needed), fixed owner and mode, and the media inside is encoded bit-exactly
(:mod:`omniforcing.data.media`), so the same samples give byte-identical shards whenever they are written.
"""

from __future__ import annotations

import glob
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import braceexpand
import webdataset as wds

SHARD_NAME = "shard-{:06d}.tar"
MANIFEST_NAME = "dataset.json"


def sample_key(index: int) -> str:
    """The key of sample ``index`` (8 digits, no dots)."""
    return f"{index:08d}"


def json_bytes(record: dict[str, Any]) -> bytes:
    """UTF-8 JSON for a ``.json`` member (keys sorted, so output is deterministic)."""
    return json.dumps(record, sort_keys=True).encode("utf-8")


class ShardSink:
    """Write samples into numbered tar shards of at most ``shard_size`` samples each.

    Args:
        out: output folder (created).
        shard_size: samples per shard.
    """

    def __init__(self, out: str | Path, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.count = 0
        self.shards: list[str] = []
        self._writer: wds.TarWriter | None = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample; ``members`` maps extension (``mp4``, ``json``, ``video_latents.npy``) to bytes."""
        if self.count % self.shard_size == 0:
            self._roll()
        assert self._writer is not None
        self._writer.write({"__key__": key, **members})
        self.count += 1

    def _roll(self) -> None:
        self.close()
        name = SHARD_NAME.format(len(self.shards))
        self.shards.append(name)
        self._writer = wds.TarWriter(str(self.out / name), encoder=False, mtime=0)

    def close(self) -> None:
        """Finish the current shard."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_manifest(out: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``dataset.json`` (counts and settings of a shard folder) and return its path."""
    path = Path(out) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def resolve_shards(spec: str) -> list[str]:
    """Shard files named by ``spec``.

    Args:
        spec: a folder (all ``*.tar`` inside, sorted), a brace pattern (``data/x/shard-{000000..000009}.tar``),
            a glob (``data/x/*.tar``), a single tar, or several of these separated by commas.

    Returns:
        The shard paths in order.

    Raises:
        FileNotFoundError: a part of ``spec`` matches no existing file.
    """
    paths: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if Path(part).is_dir():
            found = sorted(str(p) for p in Path(part).glob("*.tar"))
        elif any(c in part for c in "*?["):
            found = sorted(glob.glob(part))
        else:
            found = [p for p in braceexpand.braceexpand(part) if Path(p).is_file()]
        if not found:
            raise FileNotFoundError(f"no shard files match {part!r}")
        paths += found
    return paths


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Read the samples of one shard in order as ``(key, {extension: bytes})``.

    A damaged tar ends the iteration with ``tarfile.TarError`` (or ``OSError``/``EOFError``) raised
    after the readable samples; members are returned as raw bytes and never unpickled.
    """
    current: str | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(path, mode="r") as archive:
        for info in archive:
            if not info.isfile():
                continue
            name = Path(info.name).name
            key, _, extension = name.partition(".")
            handle = archive.extractfile(info)
            data = handle.read() if handle is not None else b""
            if key != current and current is not None:
                yield current, members
                members = {}
            current = key
            members[extension] = data
    if current is not None:
        yield current, members
