"""``omniforcing data ode-pairs``: the teacher's ODE trajectories at the student's times, as shards (Stage II data).

Captions come from the synthetic scene generator by ``(seed, index)`` (the same captions the synthetic
datamodule gives clip ``index`` with that seed and scene settings, so a teacher trained on the synthetic
recipe sees in-distribution prompts), or from a text file with one caption per line (clip ``i`` takes line
``i mod lines``). Each clip's noise is drawn from its own generator seeded by ``(seed, index)``, which is what
makes a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from omniforcing.codecs.base import AVCodec
from omniforcing.commands.generate import resolve_device
from omniforcing.data.ode_pairs import (
    encode_pair,
    finish_manifest,
    pending_shards,
    shard_file,
    shard_ranges,
    start_manifest,
    write_shard,
)
from omniforcing.data.pipeline import stream_seed
from omniforcing.data.synthetic import SceneSettings, clip_rng, make_caption, sample_objects
from omniforcing.errors import InvalidInputError, MissingInputError, check_positive
from omniforcing.inference.clips import latent_noise
from omniforcing.inference.export import load_model
from omniforcing.inference.generation import method_arg, modalities
from omniforcing.methods.ode_regression import student_grid, teacher_trajectory
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES
from omniforcing.types import AVLatents


def synthetic_caption(seed: int, index: int, scene: SceneSettings) -> str:
    """The caption of synthetic clip ``index`` of the dataset with ``seed`` (without rendering the clip)."""
    return make_caption(sample_objects(clip_rng(seed, index), scene), scene.background_sound)


def caption_source(captions: Path | None, seed: int, scene: SceneSettings) -> tuple[Callable[[int], str], str]:
    """``(index -> caption, description)`` for the manifest."""
    if captions is None:
        return (lambda index: synthetic_caption(seed, index, scene)), f"synthetic seed={seed} scene={asdict(scene)}"
    if not Path(captions).is_file():
        raise MissingInputError(f"--captions {captions}: no such file")
    lines = [line.strip() for line in Path(captions).read_text().splitlines() if line.strip()]
    if not lines:
        raise InvalidInputError(f"no captions in {captions}")
    return (lambda index: lines[index % len(lines)]), f"file {captions} ({len(lines)} lines)"


def generate_pairs(network: torch.nn.Module, codec: AVCodec, indices: range, caption: Callable[[int], str],
                   settings: dict[str, Any], modes: tuple[bool, bool], batch_size: int,
                   device: torch.device, progress: tqdm) -> Iterator[tuple[int, dict[str, bytes]]]:
    """Generate the pairs of clip ``indices`` in batches and yield ``(index, shard members)``."""
    grid = torch.tensor(settings["grid"], dtype=torch.float64)
    times = [*settings["student_times"], 0.0]
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start:start + batch_size])
        noises = [latent_noise(codec, settings["seconds"], 1, video=modes[0], audio=modes[1], device=device,
                               generator=torch.Generator().manual_seed(stream_seed(settings["seed"], i)))
                  for i in chunk]
        noise = AVLatents(*(None if parts[0] is None else torch.cat(parts) for parts in
                            ([n.video for n in noises], [n.audio for n in noises])))
        captions = [caption(i) for i in chunk]
        states = teacher_trajectory(network, captions, noise, grid, settings["grid_indices"],
                                    settings["video_cfg"], settings["audio_cfg"])
        for row, index in enumerate(chunk):
            one = states.map(lambda m, r=row: m[r])
            record = {"index": index, "seed": settings["seed"], "seconds": settings["seconds"]}
            yield index, encode_pair(captions[row], times, one, record, settings["dtype"])
            progress.update(1)


def ode_pairs(*, teacher: str, out: Path, count: int, seconds: int = 1, steps: int = 48, shift: float = 1.0,
              student_times: list[float] | None = None, cfg: float | None = None, audio_cfg: float | None = None,
              shard_size: int = 64, seed: int = 0, first: int = 0, batch_size: int = 4,
              dtype: Literal["float32", "float16"] = "float32", captions: Path | None = None, min_objects: int = 1,
              max_objects: int = 1, fixed_size: bool = True, background_sound: bool = False,
              device: str = "auto") -> None:
    """Run the teacher's Euler sampler with CFG and store its states at the student's times as shards.

    The Euler grid has ``steps`` steps and contains every student time exactly; each sample stores the states
    at those times plus the final sample (``docs/omniforcing.md``, "ODE pairs"). Rerunning with the same
    arguments skips complete shards and finishes the rest.

    Args:
        teacher: the teacher: a Lightning ``.ckpt`` from ``omniforcing fit`` or an exported folder.
        out: output folder (``shard-*.tar`` + ``dataset.json``).
        count: number of clips (pairs).
        seconds: seconds per clip after the lead frame.
        steps: Euler steps of the teacher's sampler.
        shift: schedule shift of the teacher's sampler.
        student_times: the student's few-step times (default 1.0 0.75 0.5 0.25).
        cfg: video guidance scale (default: the teacher's recorded ``video_cfg``); also audio unless
            ``audio_cfg`` is given.
        audio_cfg: audio guidance scale (default: ``cfg`` if given, else the teacher's ``audio_cfg``).
        shard_size: pairs per shard.
        seed: seed of captions and noise.
        first: index of the first clip (e.g. a validation set after the training indices).
        batch_size: clips sampled together.
        dtype: storage dtype of the states.
        captions: text file with one caption per line instead of synthetic scene captions.
        min_objects: synthetic captions: fewest objects per scene.
        max_objects: synthetic captions: most objects per scene.
        fixed_size: synthetic captions: all objects have the reference size.
        background_sound: synthetic captions: scenes with a background hum.
        device: ``auto``, ``cpu`` or ``cuda``.
    """
    check_positive(count=count, seconds=seconds, steps=steps, shard_size=shard_size, batch_size=batch_size)
    resolved = resolve_device(device)
    network, codec, config = load_model(teacher, resolved)
    times = list(DEFAULT_FEW_STEP_TIMES) if student_times is None else student_times
    grid, indices = student_grid(steps, shift, times)
    video_cfg = method_arg(config, "video_cfg", 1.0) if cfg is None else cfg
    scene = SceneSettings(min_objects, max_objects, fixed_size, background_sound)
    caption, described = caption_source(captions, seed, scene)
    settings = {"teacher": str(teacher), "seconds": seconds, "steps": steps, "shift": shift,
                "student_times": [float(t) for t in times], "grid": grid.tolist(), "grid_indices": indices,
                "video_cfg": float(video_cfg),
                "audio_cfg": float(audio_cfg if audio_cfg is not None else
                                   (cfg if cfg is not None else method_arg(config, "audio_cfg", 1.0))),
                "count": count, "first": first, "seed": seed, "shard_size": shard_size, "dtype": dtype,
                "captions": described}
    start_manifest(out, settings)
    ranges = shard_ranges(first, count, shard_size)
    todo = pending_shards(out, ranges)
    done = count - sum(len(ranges[s]) for s in todo)
    with tqdm(total=count, initial=done, desc="ode-pairs", unit="pair") as progress:
        for shard in todo:
            write_shard(out, shard, generate_pairs(network, codec, ranges[shard], caption, settings,
                                                   modalities(config), batch_size, resolved, progress))
    finish_manifest(out, settings, [shard_file(out, s).name for s in range(len(ranges))])
    print(f"{count} ODE pairs in {len(ranges)} shards in {out} ({done} already there); times "
          f"{settings['student_times']} + final, {steps}-step grid, cfg video {settings['video_cfg']} / audio "
          f"{settings['audio_cfg']}")
