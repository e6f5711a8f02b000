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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import braceexpand
import webdataset as wds

from omniforcing.errors import MissingInputError

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
        MissingInputError: a part of ``spec`` matches no existing file (a ``FileNotFoundError``).
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
            raise MissingInputError(f"no shard files match {part!r}")
        paths += found
    return paths


class ShardDamageError(tarfile.ReadError):
    """A shard whose tar data stops being readable before the end of its file.

    Python's ``tarfile`` takes a bad header after the first member for the end of the archive, so this is
    detected after the fact: the bytes after the last readable member must be the tar end-of-archive blocks.

    Args:
        shard: the shard file.
        problem: what is wrong there.
        offset: byte of the tar stream where reading stopped.
        lost: samples (distinct keys) whose members lie after ``offset`` and could not be read.
    """

    def __init__(self, shard: str | Path, problem: str, offset: int, lost: int) -> None:
        after = f"{lost} samples after it lost" if lost else "nothing readable after it"
        super().__init__(f"{problem} at byte {offset}; {after}")
        self.shard, self.problem, self.offset, self.lost = str(shard), problem, offset, lost


def member_key(name: str) -> str:
    """The sample key of a tar member name (file name up to its first dot)."""
    return Path(name).name.partition(".")[0]


def _tail_problem(stream: BinaryIO, offset: int) -> str | None:
    """Why the bytes from ``offset`` on are not a tar end (zero blocks), or ``None`` when they are."""
    stream.seek(offset)
    seen = 0
    while chunk := stream.read(1 << 16):
        if chunk.count(0) != len(chunk):
            return "unreadable tar header"
        seen += len(chunk)
    return None if seen >= tarfile.BLOCKSIZE else "no end-of-archive blocks (file cut short)"


def _keys_after(stream: BinaryIO, offset: int) -> set[str]:
    """Keys of the members whose headers lie at or after ``offset``, found by trying every 512-byte block as
    a header and skipping the data of each header found (GNU tar's resynchronisation after a bad header)."""
    keys: set[str] = set()
    position = offset
    stream.seek(position)
    while len(block := stream.read(tarfile.BLOCKSIZE)) == tarfile.BLOCKSIZE:
        try:
            info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError:
            position += tarfile.BLOCKSIZE
            continue
        if info.isfile():
            keys.add(member_key(info.name))
        position += tarfile.BLOCKSIZE * (1 + -(-info.size // tarfile.BLOCKSIZE))
        stream.seek(position)
    return keys


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Read the samples of one shard in order as ``(key, {extension: bytes})``.

    Members are returned as raw bytes and never unpickled. A shard that cannot be read to its end raises
    after its readable samples (the last of which may lack members): :class:`ShardDamageError` when the data
    stops mid-file (a corrupt header after the first member, a member cut short, a missing end), counting the
    samples lost after that point; ``tarfile.TarError`` / ``OSError`` when not even the first header reads.
    """
    current: str | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(path, mode="r") as archive:
        stream = archive.fileobj
        reading: tarfile.TarInfo | None = None  # the member whose data is being read
        try:
            for info in archive:
                if not info.isfile():
                    continue
                reading = info
                handle = archive.extractfile(info)
                data = handle.read() if handle is not None else b""
                reading = None
                key, extension = member_key(info.name), Path(info.name).name.partition(".")[2]
                if key != current and current is not None:
                    yield current, members
                    members = {}
                current = key
                members[extension] = data
        except (tarfile.ReadError, EOFError) as error:  # member data cut short, or a header tarfile refuses
            if reading is not None:
                offset, problem = reading.offset, f"member {reading.name} unreadable ({error})"
            else:
                offset, problem = archive.offset, f"unreadable tar header ({error})"
        else:
            offset, problem = archive.offset, _tail_problem(stream, archive.offset)
        lost = 0 if problem is None else len(_keys_after(stream, offset) - {current})
    if current is not None:
        yield current, members
    if problem is not None:
        raise ShardDamageError(path, problem, offset, lost)


def shard_samples(sources: Iterable[dict[str, Any]], on_error: Callable[[str, Exception], None]
                  ) -> Iterator[dict[str, Any]]:
    """WebDataset stage: shard entries ``{"url": path}`` -> samples ``{"__key__", "__url__", extension: bytes}``.

    The one tar reader of every shard stream (:func:`iter_tar_samples`). A shard that cannot be read to its end
    is passed to ``on_error(url, error)`` once, after its readable samples, and the stream goes on.
    """
    for source in sources:
        url = source["url"]
        try:
            for key, members in iter_tar_samples(url):
                yield {"__key__": key, "__url__": url, **members}
        except (tarfile.TarError, OSError, EOFError) as error:
            on_error(url, error)
