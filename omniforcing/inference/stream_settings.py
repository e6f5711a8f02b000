"""Settings of the streaming engine, and how they default from what a trained model recorded.

A trained model's config (``omniforcing.inference.export.load_model``) carries, under ``method_args``, the
generation settings its method declared (``generation_settings()`` of the method's LightningModule, saved in
every checkpoint; the names are :data:`GENERATION_SETTINGS`). A new method declares its settings there and
nothing in this file changes. The engine reads:

* ``few_step_times`` or ``times`` — the few-step times the student was trained on (a distilled student);
* otherwise ``sample_steps`` / ``sample_shift`` — a flow-matching model sampled on the Euler grid (e.g. a
  causal model trained with the teacher's flow matching), whose ``video_cfg`` / ``audio_cfg`` then give the
  guidance (distilled students are sampled without guidance: it is baked into their weights);
* ``context_time`` — flow time of the clean-context refresh (default 0);
* ``step_size`` — the step-size conditioning value of few-step sampling (Mutual Forcing), required when the
  network has step-size conditioning;
* ``window_seconds`` / ``audio_window_seconds`` — the KV-cache window the model was trained with (default
  :data:`DEFAULT_WINDOW_SECONDS`);
* ``modality`` — ``joint``, ``video`` or ``audio``.

Exports of checkpoints written before methods declared their settings hold the method's hyperparameters
instead; :func:`method_setting` also finds a name inside a nested ``init_args`` there (e.g. a Self-Forcing
rollout object).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from omniforcing.diffusion.schedules import euler_schedule
from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES, check_times

log = logging.getLogger(__name__)

DEFAULT_WINDOW_SECONDS = 10.0
"""KV-cache window when none is given: bounded memory and flat per-block cost for any stream length."""

PrefixPosition = Literal["absolute", "relative"]
Modality = Literal["joint", "video", "audio"]
CompileBackend = Literal["inductor", "cudagraphs", "aot_eager"]

GENERATION_SETTINGS = {
    "few_step_times": "few-step times of a distilled student, decreasing in (0, 1] (also read as 'times')",
    "sample_steps": "Euler steps of a flow-matching model (teacher; Mutual Forcing's multi-step mode)",
    "sample_shift": "schedule shift of those Euler steps",
    "video_cfg": "video guidance scale of the Euler sampler",
    "audio_cfg": "audio guidance scale of the Euler sampler",
    "context_time": "flow time at which a finished block is committed to the cache (0 = clean)",
    "step_size": "step-size conditioning value of few-step sampling (Mutual Forcing)",
    "window_seconds": "video KV-cache window the model was trained with",
    "audio_window_seconds": "audio KV-cache window (None = window_seconds)",
    "modality": "joint, video or audio",
}
"""Names a method's ``generation_settings()`` may record, and what each means to generation and streaming. A
method may record more (Mutual Forcing records its own ``multi_step_size``); these are the ones read here."""


@dataclass(frozen=True)
class StreamingSettings:
    """How a causal student is sampled and decoded block by block.

    Args:
        video_times: few-step times of video (decreasing, in ``(0, 1]``); also audio's unless ``audio_times``.
        audio_times: few-step times of audio when they differ (asymmetric steps, see
            :mod:`omniforcing.sampling.few_step`).
        context_time: flow time at which each finished block is committed to the cache (0 = clean).
        window_seconds: video KV-cache window in whole seconds (``None`` = never evict: memory and per-block
            cost then grow with the stream).
        audio_window_seconds: audio window (``None`` = ``window_seconds``).
        prefix_position: RoPE policy of the pinned prefix once the window has moved on (``None`` = the
            model's own ``prefix_position``); see docs/streaming.md for how to choose.
        video_cfg: classifier-free guidance scale of video (1 = none; > 1 needs a second cache and doubles the
            forwards).
        audio_cfg: guidance scale of audio.
        step_size: step-size conditioning value passed with every forward (models with
            ``step_size_conditioning`` only, e.g. Mutual Forcing's few-step mode).
        modality: streams generated: ``joint``, or ``video`` / ``audio`` for uni-modal models.
        decode: decode blocks to media (False yields latents only).
        overlap: generate on a background thread while the caller decodes and consumes earlier blocks.
        lookahead: blocks the background thread may run ahead of the consumer (bounded memory).
        video_decode_context: video latents of history for the decoder (``None``: the codec's own context).
        audio_decode_context: audio latents of left context for the audio decoder (``None``: the codec's
            causal context).
        exact_decode: hold each block's media back until the decoders' ``decode_lookahead`` latents after it
            exist, so streamed media equal decoding the whole clip (latency grows by the lookahead: LTX-2's
            video VAE 22 latents = 7.3 s, its vocoder 5 latents = 0.2 s); no effect with causal codecs.
        compile: run every block step captured (``omniforcing.sampling.capture``: CUDA graphs over static
            buffers); ``None`` = on CUDA, eager elsewhere (``--compile true|false`` on the command line).
        compile_backend: ``torch.compile`` backend of the captured step: ``inductor`` (fused kernels replayed as
            CUDA graphs) or ``cudagraphs`` (CUDA graphs over unfused ops; compiles in seconds), see
            :func:`omniforcing.sampling.capture.capture_block_step`.
    """

    video_times: tuple[float, ...] = DEFAULT_FEW_STEP_TIMES
    audio_times: tuple[float, ...] | None = None
    context_time: float = 0.0
    window_seconds: float | None = DEFAULT_WINDOW_SECONDS
    audio_window_seconds: float | None = None
    prefix_position: PrefixPosition | None = None
    video_cfg: float = 1.0
    audio_cfg: float = 1.0
    step_size: float | None = None
    modality: Modality = "joint"
    decode: bool = True
    overlap: bool = False
    lookahead: int = 1
    video_decode_context: int | None = None
    audio_decode_context: int | None = None
    exact_decode: bool = False
    compile: bool | None = None
    compile_backend: CompileBackend = "inductor"

    def __post_init__(self) -> None:
        for name, times in (("video_times", self.video_times), ("audio_times", self.audio_times)):
            if times is not None:
                check_times(times, name)
        if not 0.0 <= self.context_time < 1.0:
            raise ValueError(f"context_time must lie in [0, 1), got {self.context_time}")
        for name, window in (("window_seconds", self.window_seconds),
                             ("audio_window_seconds", self.audio_window_seconds)):
            if window is not None and window < 1:
                raise ValueError(f"{name} must be >= 1 second (or None), got {window}")
        if self.modality not in ("joint", "video", "audio"):
            raise ValueError(f"modality must be joint, video or audio, got {self.modality!r}")
        if self.compile_backend not in ("inductor", "cudagraphs", "aot_eager"):
            raise ValueError(f"compile_backend must be inductor, cudagraphs or aot_eager, got {self.compile_backend!r}")
        if self.lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {self.lookahead}")

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (a second cache and twice the forwards)."""
        return self.video_cfg != 1.0 or self.audio_cfg != 1.0

    @property
    def forwards_per_block(self) -> int:
        """Backbone forwards per block: the longer schedule plus the commit, times two with guidance."""
        steps = max(len(self.video_times), len(self.audio_times or self.video_times))
        return (steps + 1) * (2 if self.guided else 1)


def compiles_on(device: torch.device, compile: bool | None) -> bool:
    """Whether a ``compile`` switch (``None`` = the default) runs compiled on ``device``: the default is on CUDA
    (captured block steps, compiled whole-clip forwards) and eager elsewhere, for streaming and whole clips alike."""
    return device.type == "cuda" if compile is None else compile


def method_setting(config: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` set (not ``None``) in ``config["method_args"]``: top level, then nested ``init_args``
    (the nested search serves exports of older checkpoints, which recorded hyperparameter trees)."""
    args = config.get("method_args", {})
    for name in names:
        if args.get(name) is not None:
            return args[name]
    for value in args.values():
        if isinstance(value, dict):
            found = method_setting({"method_args": value.get("init_args", value)}, *names)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class RecordedSampler:
    """The sampler a model recorded: few-step times (student) or an Euler grid (flow-matching model).

    Args:
        times: the recorded times (``None`` for a flow-matching model).
        steps: Euler steps of a flow-matching model.
        shift: its schedule shift.
        cfg: its ``(video, audio)`` guidance; ``(1, 1)`` for students.
    """

    times: tuple[float, ...] | None
    steps: int = 4
    shift: float = 1.0
    cfg: tuple[float, float] = field(default=(1.0, 1.0))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RecordedSampler:
        """Read the model's recorded sampler (module docstring)."""
        times = method_setting(config, "few_step_times", "times")
        if times is not None:
            return cls(tuple(float(t) for t in times))
        steps = method_setting(config, "sample_steps")
        if steps is None:
            log.warning("the model recorded no sampler; using the default few-step times %s", DEFAULT_FEW_STEP_TIMES)
            return cls(DEFAULT_FEW_STEP_TIMES)
        def number(name: str) -> float:
            value = method_setting(config, name)
            return 1.0 if value is None else float(value)

        return cls(None, int(steps), number("sample_shift"), (number("video_cfg"), number("audio_cfg")))

    def times_for(self, steps: int | None) -> tuple[float, ...]:
        """Times of a ``steps``-step schedule (``None``: as recorded).

        A student's recorded list is subsampled (evenly, keeping its first and last time) for fewer steps;
        more steps than recorded fall back to a uniform grid, with a warning (the student never saw those
        times). A flow-matching model gets the Euler grid of ``steps`` steps without its final 0.
        """
        if self.times is None:
            grid = euler_schedule(steps or self.steps, self.shift)[:-1]
            return tuple(float(t) for t in grid)
        if steps is None or steps == len(self.times):
            return self.times
        if steps < len(self.times):
            index = torch.linspace(0, len(self.times) - 1, steps).round().long()
            return tuple(self.times[int(i)] for i in index)
        log.warning("%d steps requested, the student was trained on %d times %s; using a uniform grid", steps,
                    len(self.times), self.times)
        return tuple(float(t) for t in euler_schedule(steps)[:-1])


def settings_from_config(config: dict[str, Any], *, video_steps: int | None = None, audio_steps: int | None = None,
                         **overrides: Any) -> StreamingSettings:
    """Settings for a trained model: its recorded sampler, then ``overrides`` (fields of :class:`StreamingSettings`).

    Args:
        config: the model's config from :func:`omniforcing.inference.export.load_model`.
        video_steps: denoising steps of video (``None``: as recorded).
        audio_steps: denoising steps of audio (``None``: the same as video).
        **overrides: any :class:`StreamingSettings` field; ``None`` values are ignored.
    """
    sampler = RecordedSampler.from_config(config)
    video_times = sampler.times_for(video_steps)
    audio_times = None if audio_steps is None else sampler.times_for(audio_steps)
    recorded = StreamingSettings(
        video_times=video_times,
        audio_times=None if audio_times == video_times else audio_times,
        context_time=float(method_setting(config, "context_time") or 0.0),
        video_cfg=sampler.cfg[0],
        audio_cfg=sampler.cfg[1],
        step_size=method_setting(config, "step_size"),
        window_seconds=method_setting(config, "window_seconds") or DEFAULT_WINDOW_SECONDS,
        audio_window_seconds=method_setting(config, "audio_window_seconds"),
        modality=method_setting(config, "modality") or "joint",
    )
    return replace(recorded, **{k: v for k, v in overrides.items() if v is not None})
