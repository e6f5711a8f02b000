"""Pre-encoding: media shards -> fixed windows -> codec latents -> latent shards (``omniforcing data encode``).

A stored clip of ``L`` whole seconds gives windows of ``S`` seconds (plus the lead frame / lead audio latent)
at offsets ``0, stride, 2 stride, ...`` while ``offset + S <= L``. Each window is encoded **on its own**, from
its own first frame: with a causal codec latent 0 is "frame 0 alone", so the latents of a window are not a
slice of the latents of the whole clip. A window at offset ``o`` covers frames ``fps o .. fps (o + S)`` and
samples ``sr o .. sr (o + S) + sr / 25``, i.e. video and audio start at the same instant.

A latent sample (docs/data.md) holds ``video_latents.npy`` ``(1 + 3 S, C, h, w)``, ``audio_latents.npy``
``(1 + 25 S, C)`` (float32 by default, so a batch read back equals the codec's ``encode`` exactly; float16 halves
the size at a rounding error of about 1e-3 of the unit-variance latents, docs/codecs.md) and ``json``:
the stored clip's metadata with its ``events`` unchanged (times from the stored clip's frame 0) plus
``latent_offset_seconds`` (the datamodule shifts event times by it), ``seconds`` / ``num_frames`` /
``num_samples`` of the window, ``source_shard`` / ``source_key``, and ``codec_fingerprint``. With a text
encoder (``--text-encoder``) each sample also holds its caption's features ``prompt.safetensors`` and the folder
the bank file ``prompts.safetensors`` (data/prompt_encoding.py).

Output shard ``k`` holds windows ``k K .. (k + 1) K - 1`` of the plan (``K`` = shard size) and is written to a
temporary name and renamed when complete, so a re-run skips finished shards and redoes only the rest
(``dataset.json`` records the settings; a re-run with other settings or another codec is refused).

Reading them back (:func:`check_latent_shards`, called by ``AVDataModule.setup``): latents are only meaningful to
a model whose codec made them, so the datamodule compares the ``codec_fingerprint`` of the shards with the
training module's codec before the first step and names what differs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import webdataset as wds
from torch import Tensor, nn
from tqdm import tqdm

from omniforcing.codecs.base import AVCodec
from omniforcing.codecs.checkpoint import codec_config
from omniforcing.data.decoding import AUDIO_LATENTS, VIDEO_LATENTS, BadSampleError, decode_media, parse_metadata
from omniforcing.data.media import MediaError, read_av
from omniforcing.data.shards import MANIFEST_NAME, SHARD_NAME, iter_tar_samples, json_bytes, sample_key
from omniforcing.errors import InvalidInputError
from omniforcing.types import AUDIO_LATENT_RATE, ClipSpec, frame_label

if TYPE_CHECKING:  # imported when used: the prompt encoders load diffusers and transformers
    from omniforcing.data.prompt_encoding import PromptFeatureEncoder

log = logging.getLogger(__name__)

LatentDtype = Literal["float16", "float32"]


@dataclass(frozen=True)
class LatentWindow:
    """One window to encode: ``seconds`` from ``offset`` (whole seconds) of sample ``key`` in ``shard``."""

    shard: str
    key: str
    offset: int
    stored_seconds: int


def codec_fingerprint(codec: nn.Module) -> str:
    """A short hash of a codec's config record and every tensor of its state (weights and statistics)."""
    digest = hashlib.sha256(json.dumps(codec_config(codec), sort_keys=True).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def stored_seconds(meta: dict[str, Any], members: dict[str, bytes], fps: int, sample_rate: int) -> int:
    """Whole seconds after the lead frame that a stored clip holds in both modalities.

    From the json's ``num_frames`` / ``num_samples`` when present (shards of ``data synth`` / ``data pack``),
    else by decoding the mp4.
    """
    if "num_frames" in meta and "num_samples" in meta:
        frames, samples = int(meta["num_frames"]), int(meta["num_samples"])
    else:
        try:
            clip = read_av(members["mp4"])
        except MediaError as error:
            raise BadSampleError(str(error)) from error
        frames, samples = clip.video.shape[0], clip.audio.shape[-1] if clip.audio is not None else 0
    return min((frames - 1) // fps, (samples - sample_rate // AUDIO_LATENT_RATE) // sample_rate)


def check_stored_geometry(meta: dict[str, Any], fps: int, sample_rate: int,
                          frame_size: tuple[int, int] | None) -> None:
    """Raise :class:`BadSampleError` when the json states another frame rate, sample rate or frame size
    (``size`` is the height; ``width``, absent in shards of square frames, defaults to it)."""
    for name, want in (("fps", fps), ("sample_rate", sample_rate)):
        if name in meta and int(meta[name]) != want:
            raise BadSampleError(f"{name} {meta[name]} != the codec's {want}")
    if frame_size is not None and "size" in meta:
        stored = (int(meta["size"]), int(meta.get("width", meta["size"])))
        if stored != tuple(frame_size):
            raise BadSampleError(f"frame size {frame_label(stored)} != the codec's {frame_label(frame_size)}")


def plan_windows(shards: list[str], seconds: int, stride_seconds: int, fps: int, sample_rate: int,
                 frame_size: tuple[int, int] | None = None) -> tuple[list[LatentWindow], list[str]]:
    """Every window of ``seconds`` at offsets ``0, stride, ...`` of every media sample, in shard order.

    Args:
        shards: media shard paths.
        seconds: window length after the lead frame.
        stride_seconds: seconds between consecutive window offsets of one stored clip.
        fps: frame rate the media must have.
        sample_rate: sample rate the media must have.
        frame_size: ``(height, width)`` the media must have (``None``: not checked).

    Returns:
        ``(windows, skipped)``: the windows, and ``"shard key: reason"`` for samples that cannot be used
        (not media, unreadable json, other rates or frame size, shorter than one window, damaged tar data).
    """
    if seconds < 1 or stride_seconds < 1:
        raise ValueError(f"seconds and stride_seconds must be >= 1, got {seconds}, {stride_seconds}")
    windows: list[LatentWindow] = []
    skipped: list[str] = []
    for shard in shards:
        try:
            for key, members in iter_tar_samples(shard):
                try:
                    if "mp4" not in members:
                        raise BadSampleError("not a media sample (no mp4 member)")
                    meta = parse_metadata(members)
                    check_stored_geometry(meta, fps, sample_rate, frame_size)
                    length = stored_seconds(meta, members, fps, sample_rate)
                    if length < seconds:
                        raise BadSampleError(f"too short: {length} s stored, a window needs {seconds} s")
                except BadSampleError as error:
                    skipped.append(f"{Path(shard).name} {key}: {error}")
                    continue
                windows += [LatentWindow(shard, key, offset, length)
                            for offset in range(0, length - seconds + 1, stride_seconds)]
        except (tarfile.TarError, OSError, EOFError) as error:
            skipped.append(f"{Path(shard).name}: unreadable shard data after {len(windows)} windows ({error})")
    for reason in skipped[:10]:
        log.warning("skipping %s", reason)
    return windows, skipped


def crop_window(video: Tensor, audio: Tensor, offset: int, spec: ClipSpec) -> tuple[Tensor, Tensor]:
    """Window ``spec`` at ``offset`` seconds of a decoded clip ``(T, 3, H, W)``, ``(1, S)``."""
    first_frame, first_sample = spec.fps * offset, spec.sample_rate * offset
    return (video[first_frame:first_frame + spec.num_frames],
            audio[:, first_sample:first_sample + spec.num_samples])


class WindowReader:
    """Decodes the media windows of a plan, keeping the last decoded clip (windows of a clip are consecutive).

    Args:
        spec: the window geometry (``seconds``, rates and frame size the media must have).
    """

    def __init__(self, spec: ClipSpec) -> None:
        self.spec = spec
        self._shard: str | None = None
        self._samples: Iterator[tuple[str, dict[str, bytes]]] | None = None
        self._clip: tuple[str, str, dict[str, Any], Tensor, Tensor] | None = None

    def _members(self, shard: str, key: str) -> dict[str, bytes]:
        if self._shard != shard:
            self._shard, self._samples = shard, iter_tar_samples(shard)
        assert self._samples is not None
        for found, members in self._samples:  # plans list keys in shard order, so this only moves forward
            if found == key:
                return members
        self._shard = None
        raise BadSampleError(f"sample {key} not found in {shard} (the shard changed since planning?)")

    def read(self, window: LatentWindow) -> tuple[dict[str, Any], Tensor, Tensor]:
        """``(metadata, video (T, 3, H, W), audio (1, S))`` of one window."""
        if self._clip is None or self._clip[:2] != (window.shard, window.key):
            members = self._members(window.shard, window.key)
            meta = parse_metadata(members)
            whole = ClipSpec(window.stored_seconds, self.spec.fps, self.spec.sample_rate, self.spec.size,
                             self.spec.width)
            example = decode_media({"__key__": window.key, **members}, meta, whole, None)
            assert example.video is not None and example.audio is not None
            self._clip = (window.shard, window.key, meta, example.video, example.audio)
        return self._clip[2], *crop_window(self._clip[3], self._clip[4], window.offset, self.spec)


def iter_window_batches(windows: list[LatentWindow], spec: ClipSpec, batch_size: int,
                        skipped: list[str] | None = None) -> Iterator[tuple[list[int], list[dict], Tensor, Tensor]]:
    """Decoded windows in batches: ``(plan indices, metadata, video (B, T, 3, H, W), audio (B, 1, S))``.

    Windows whose media cannot be decoded are left out; ``"key: reason"`` is appended to ``skipped``.
    """
    reader = WindowReader(spec)
    batch: list[tuple[int, dict, Tensor, Tensor]] = []
    for index, window in enumerate(windows):
        try:
            batch.append((index, *reader.read(window)))
        except BadSampleError as error:
            if skipped is not None:
                skipped.append(f"{Path(window.shard).name} {window.key}: {error}")
            log.warning("skipping window %d (%s %s): %s", index, window.shard, window.key, error)
        if len(batch) == batch_size or (batch and index == len(windows) - 1):
            indices, metas, videos, audios = zip(*batch, strict=True)
            yield list(indices), list(metas), torch.stack(videos), torch.stack(audios)
            batch = []


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as ``.npy`` file bytes (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def latent_members(meta: dict[str, Any], window: LatentWindow, spec: ClipSpec, video_latents: Tensor,
                   audio_latents: Tensor, fingerprint: str, dtype: LatentDtype,
                   prompt: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Tar members of one latent sample: ``video_latents.npy`` ``(Tv, C, h, w)``, ``audio_latents.npy``
    ``(Ta, C)`` in ``dtype``, the json record (stored metadata + window fields, events unchanged), and the caption's
    features (``prompt``: ``{"prompt.safetensors": bytes}``, models/ltx2/prompt_bank.py)."""
    record = {**meta, "seconds": spec.seconds, "num_frames": spec.num_frames, "num_samples": spec.num_samples,
              "latent_offset_seconds": float(window.offset), "source_shard": Path(window.shard).name,
              "source_key": window.key, "codec_fingerprint": fingerprint}
    return {VIDEO_LATENTS: npy_bytes(video_latents.cpu().numpy().astype(dtype)),
            AUDIO_LATENTS: npy_bytes(audio_latents.cpu().numpy().astype(dtype)),
            "json": json_bytes(record), **(prompt or {})}


def check_resume(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest of an earlier run into ``out`` (its settings must equal ``settings``), or a fresh one."""
    path = out / MANIFEST_NAME
    if not path.is_file():
        return {**settings, "complete": False, "shard_samples": {}, "skipped": []}
    manifest = json.loads(path.read_text())
    differ = [f"{k}: earlier {manifest.get(k)!r}, now {v!r}" for k, v in settings.items() if manifest.get(k) != v]
    if differ:
        raise InvalidInputError(f"{out} holds latent shards written with other settings ({'; '.join(differ)}); "
                         "use another --out folder or delete it")
    return manifest


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """Write a tar shard under a temporary name and rename it, so an existing shard is always complete."""
    partial = path.with_name(path.name + ".partial")
    writer = wds.TarWriter(str(partial), encoder=False, mtime=0)
    for key, members in samples:
        writer.write({"__key__": key, **members})
    writer.close()
    os.replace(partial, path)


@torch.no_grad()
def encode_latent_shards(codec: AVCodec, shards: list[str], out: str | Path, seconds: int, stride_seconds: int = 1,
                         shard_size: int = 256, batch_size: int = 16, dtype: LatentDtype = "float32",
                         device: str = "cpu", progress: bool = True,
                         prompt_encoder: PromptFeatureEncoder | None = None) -> dict[str, Any]:
    """Encode every window of the media ``shards`` with ``codec`` into latent shards in ``out``.

    Args:
        codec: the codec whose latents the methods will train on (the same as in their recipe).
        shards: media shard paths.
        out: output folder (``shard-000000.tar`` ... and ``dataset.json``).
        seconds: window length after the lead frame.
        stride_seconds: whole seconds between the offsets of consecutive windows of one stored clip.
        shard_size: windows per output shard.
        batch_size: windows encoded together.
        dtype: storage type of the latents.
        device: where the codec runs.
        progress: show a progress bar.
        prompt_encoder: when given, each sample also gets its caption's features and ``out`` the bank file
            ``prompts.safetensors`` (data/prompt_encoding.py).

    Returns:
        The manifest written to ``out/dataset.json``.

    Raises:
        InvalidInputError: no sample of the input gives a window, or ``out`` holds shards of a run with other
            settings.
        RuntimeError: no window could be decoded.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codec = codec.to(device).eval()
    spec = ClipSpec(seconds, codec.video.fps, codec.audio.sample_rate, *codec.video.size)
    windows, skipped = plan_windows(shards, seconds, stride_seconds, spec.fps, spec.sample_rate, spec.frame_size)
    if not windows:
        raise InvalidInputError(f"no window of {seconds} s in {len(shards)} shards: {'; '.join(skipped[:5])}")
    settings = {"kind": "latents", "sources": [str(Path(s).resolve()) for s in shards], "windows": len(windows),
                "seconds": seconds, "stride_seconds": stride_seconds, "shard_size": shard_size, "dtype": dtype,
                "fps": spec.fps, "sample_rate": spec.sample_rate, "size": spec.size,
                **spec.width_record(), "video_latent_rate": codec.video.latent_rate,
                "codec_fingerprint": codec_fingerprint(codec),
                "codec": codec_config(codec),
                "text_encoder": prompt_encoder.description() if prompt_encoder is not None else None}
    manifest = check_resume(out, json.loads(json.dumps(settings)))  # JSON types, as an earlier manifest has
    prompts = None
    if prompt_encoder is not None:
        from omniforcing.data.prompt_encoding import CaptionFeatures
        prompts = CaptionFeatures(prompt_encoder, batch_size)
    manifest["skipped"] = sorted(set(manifest["skipped"]) | set(skipped))
    bar = tqdm(total=len(windows), disable=not progress, desc="encode", unit="window")
    for first in range(0, len(windows), shard_size):
        name, part = SHARD_NAME.format(first // shard_size), windows[first:first + shard_size]
        if (out / name).is_file():
            if prompts is not None:
                prompts.read_shard(out / name)
            bar.update(len(part))
            continue
        samples, failed = [], []
        for indices, metas, video, audio in iter_window_batches(part, spec, batch_size, failed):
            video_latents, audio_latents = codec.video.encode(video.to(device)), codec.audio.encode(audio.to(device))
            captions = [str(meta.get("caption", "")) for meta in metas]  # the caption batches carry (decoding.py)
            features = prompts.members(captions) if prompts is not None else [None] * len(metas)
            samples += [(sample_key(first + i), latent_members(meta, part[i], spec, v, a,
                                                               settings["codec_fingerprint"], dtype, prompt))
                        for i, meta, v, a, prompt in zip(indices, metas, video_latents, audio_latents, features,
                                                         strict=True)]
            bar.update(len(indices))
        write_shard(out / name, samples)
        if prompts is not None:
            prompts.read_shard(out / name)  # its members are read back from there: memory holds one shard's
        manifest["shard_samples"][name] = len(samples)
        manifest["skipped"] = sorted(set(manifest["skipped"]) | set(failed))
        (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    bar.close()
    if not sum(manifest["shard_samples"].values()):
        raise RuntimeError(f"no window of {len(windows)} could be decoded: {'; '.join(manifest['skipped'][:5])}")
    if prompts is not None:
        prompts.save_into(out)
    manifest.update(complete=True, samples=sum(manifest["shard_samples"].values()),
                    shards=sorted(manifest["shard_samples"]))
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_latent_manifest(folder: Path) -> dict[str, Any] | None:
    """The ``dataset.json`` of a latent shard folder, else ``None`` (no manifest, or one of media shards)."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("kind") == "latents" else None


def first_sample_record(shard: str) -> tuple[bool, dict[str, Any]]:
    """``(is_latent_sample, json record)`` of the first sample of a shard (``(False, {})`` for an empty one)."""
    for _, members in iter_tar_samples(shard):
        is_latent = VIDEO_LATENTS in members or AUDIO_LATENTS in members
        return is_latent, parse_metadata(members) if "json" in members else {}
    return False, {}


def config_differences(saved: Any, built: Any, where: str = "codec") -> list[str]:
    """Leaf-by-leaf differences of two ``{"class_path", "init_args"}`` trees, as ``"path: saved X, now Y"``."""
    if isinstance(saved, dict) and isinstance(built, dict):
        if saved.get("class_path") != built.get("class_path"):  # other classes: their arguments do not compare
            return [f"{where}.class_path: shards {saved.get('class_path')!r}, model {built.get('class_path')!r}"]
        return [difference for key in sorted(set(saved) | set(built))
                for difference in config_differences(saved.get(key), built.get(key), f"{where}.{key}")]
    if json.loads(json.dumps(saved)) != json.loads(json.dumps(built)):
        return [f"{where}: shards {saved!r}, model {built!r}"]
    return []


def check_latent_shards(shards: list[str], spec: ClipSpec, video_latent_rate: int, codec: AVCodec | None,
                        require_latents: bool) -> None:
    """Check latent shards against the run reading them, before its first step.

    Per folder of shards: its ``dataset.json`` (written by ``data encode``) or else the json of its first sample
    must state the clip's fps and sample rate, at least ``spec.seconds`` seconds, ``video_latent_rate``, and —
    when ``codec`` is given — the fingerprint of exactly this codec (config, weights and statistics). Folders of
    media shards are passed over unless ``require_latents``.

    Raises:
        InvalidInputError: naming the folder and every difference (for another codec: the differing init args, or
            that the weights/statistics differ).
    """
    model_codec = None if codec is None else (codec_config(codec), codec_fingerprint(codec))
    for folder in dict.fromkeys(Path(shard).parent for shard in shards):
        manifest = read_latent_manifest(folder)
        first = next(shard for shard in shards if Path(shard).parent == folder)
        is_latent, record = (True, manifest) if manifest else first_sample_record(first)
        if not is_latent:
            if require_latents:
                raise InvalidInputError(f"{folder} holds media shards, not latents (latents: true); pre-encode them with "
                                 "`omniforcing data encode` or set data.init_args.latents: false")
            continue
        problems = [f"{name} {record[name]} != the clip's {want}"
                    for name, want in (("fps", spec.fps), ("sample_rate", spec.sample_rate))
                    if name in record and int(record[name]) != want]
        if int(record.get("seconds", spec.seconds)) < spec.seconds:
            problems.append(f"windows of {record['seconds']} s are shorter than the clip's {spec.seconds} s")
        if int(record.get("video_latent_rate", video_latent_rate)) != video_latent_rate:
            problems.append(f"video_latent_rate {record['video_latent_rate']} != {video_latent_rate}")
        if model_codec is not None:
            problems += codec_problems(record, *model_codec)
        if problems:
            raise InvalidInputError(f"latent shards in {folder} do not fit this run: " + "; ".join(problems))


def codec_problems(record: dict[str, Any], config: dict[str, Any], fingerprint: str) -> list[str]:
    """Why the codec that wrote latent shards (``record``: their manifest or sample json) is not the model's
    codec, given by its config record and :func:`codec_fingerprint`."""
    saved = record.get("codec_fingerprint")
    if saved is None:
        log.warning("latent shards without a codec_fingerprint: cannot check that they were encoded with the "
                    "model's codec (write them with `omniforcing data encode`)")
        return []
    if saved == fingerprint:
        return []
    differences = config_differences(record["codec"], config) if "codec" in record else []
    detail = "; ".join(differences[:8]) if differences else "same class and init args, other weights or statistics"
    return [f"they were encoded with another codec (fingerprint {saved} vs the model's {fingerprint}: "
            f"{detail}); re-encode with this codec (`omniforcing data encode --codec <method recipe>`) or set the "
            "recipe's codec to the one that encoded them"]
