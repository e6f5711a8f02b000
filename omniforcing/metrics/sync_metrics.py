"""torchmetrics wrappers of the sync measurements: accumulate over clips, sum-reduce across processes.

Each metric's ``update`` takes the :class:`~omniforcing.metrics.sync.ClipSignals` of a batch (from a
:class:`~omniforcing.metrics.sync.SyncAnalyzer`), so the optical flow and onset analysis of a clip are
computed once and shared by all three metrics. All states are sums (``dist_reduce_fx="sum"``), so
``compute`` under DDP equals a single process that saw every clip. ``compute`` returns a dict of named
float64 scalars (NaN where nothing was measured, e.g. AV-Align when every clip had no peaks at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from omniforcing.metrics.sync import ClipSignals, av_align_score, estimate_av_offset, match_events, merge_close_events


def _add_sum_states(metric: Metric, names: Sequence[str]) -> None:
    for name in names:
        metric.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    return numerator / denominator if denominator > 0 else torch.full_like(numerator, float("nan"))


class AVAlign(Metric):
    """Mean AV-Align score over clips (Yariv et al., AAAI 2024; reference semantics in :mod:`sync`).

    Clips where both the audio-onset and the video-peak sets are empty are not scored (the reference divides
    by zero); they are counted in ``av_align_empty_clips``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        _add_sum_states(self, ("score_sum", "scored_clips", "empty_clips"))

    def update(self, signals: Sequence[ClipSignals]) -> None:
        """Score each clip of ``signals`` (one :class:`ClipSignals` per clip)."""
        for clip in signals:
            score = av_align_score(clip.onset_times, clip.motion_peak_times, clip.fps)
            if score is None:
                self.empty_clips += 1
            else:
                self.score_sum += score
                self.scored_clips += 1

    def compute(self) -> dict[str, Tensor]:
        """``{"av_align": mean score in [0, 1], "av_align_clips": scored clips, "av_align_empty_clips": ...}``."""
        return {"av_align": _ratio(self.score_sum, self.scored_clips), "av_align_clips": self.scored_clips.clone(),
                "av_align_empty_clips": self.empty_clips.clone()}


class AVSyncOffset(Metric):
    """Audio-visual offset (ms, positive = audio lags video) by envelope cross-correlation, over clips.

    Besides mean, mean absolute value and standard deviation, it reports two statistics that a few failed
    clips (a spurious correlation peak) cannot drag away: the median offset, from a histogram state with
    ``resolution_ms`` bins (so it also merges across processes by summing), and the fraction of clips whose
    offset is within ``in_sync_frames`` video frames of zero.

    Args:
        visual_envelope: ``"impact"`` (change of the cell-averaged flow; peaks at impacts, the right choice for
            object sounds) or ``"motion"`` (mean flow magnitude, the AV-Align trajectory).
        max_offset_ms: symmetric search range of the lag.
        resolution_ms: lag step before the parabolic peak refinement, and histogram bin width.
        in_sync_frames: tolerance of ``av_offset_in_sync`` in frames of each clip's video.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, *, visual_envelope: Literal["impact", "motion"] = "impact", max_offset_ms: float = 500.0,
                 resolution_ms: float = 5.0, in_sync_frames: float = 1.0) -> None:
        super().__init__()
        if visual_envelope not in ("impact", "motion"):
            raise ValueError(f"visual_envelope must be 'impact' or 'motion', got {visual_envelope!r}")
        self.visual_envelope = visual_envelope
        self.max_offset_ms = max_offset_ms
        self.resolution_ms = resolution_ms
        self.in_sync_frames = in_sync_frames
        _add_sum_states(self, ("offset_sum", "abs_offset_sum", "square_offset_sum", "confidence_sum",
                               "correlation_sum", "clips", "skipped_clips", "in_sync_clips"))
        self.half_bins = round(max_offset_ms / resolution_ms)
        self.add_state("offset_histogram", torch.zeros(2 * self.half_bins + 1, dtype=torch.float64),
                       dist_reduce_fx="sum")

    def update(self, signals: Sequence[ClipSignals]) -> None:
        """Estimate and accumulate each clip's offset; clips with a constant envelope are counted as skipped."""
        for clip in signals:
            visual = clip.impact_envelope if self.visual_envelope == "impact" else clip.motion
            estimate = estimate_av_offset(clip.onset_envelope, clip.envelope_rate, visual, clip.fps,
                                          max_offset_ms=self.max_offset_ms, resolution_ms=self.resolution_ms)
            if estimate is None:
                self.skipped_clips += 1
                continue
            self.offset_sum += estimate.offset_ms
            self.abs_offset_sum += abs(estimate.offset_ms)
            self.square_offset_sum += estimate.offset_ms**2
            self.confidence_sum += estimate.confidence
            self.correlation_sum += estimate.correlation
            self.clips += 1
            self.in_sync_clips += abs(estimate.offset_ms) <= self.in_sync_frames * 1000 / clip.fps
            index = min(max(round(estimate.offset_ms / self.resolution_ms), -self.half_bins), self.half_bins)
            self.offset_histogram[index + self.half_bins] += 1

    def compute(self) -> dict[str, Tensor]:
        """Mean, median, mean absolute and std of the offset (ms), in-sync fraction, confidence, clip counts."""
        mean = _ratio(self.offset_sum, self.clips)
        variance = (_ratio(self.square_offset_sum, self.clips) - mean.square()).clamp(min=0)
        return {
            "av_offset_ms": mean,
            "av_offset_median_ms": self._median(),
            "av_offset_abs_ms": _ratio(self.abs_offset_sum, self.clips),
            "av_offset_std_ms": variance.sqrt(),
            "av_offset_in_sync": _ratio(self.in_sync_clips, self.clips),
            "av_offset_confidence": _ratio(self.confidence_sum, self.clips),
            "av_offset_correlation": _ratio(self.correlation_sum, self.clips),
            "av_offset_clips": self.clips.clone(),
            "av_offset_skipped_clips": self.skipped_clips.clone(),
        }

    def _median(self) -> Tensor:
        """Median offset from the histogram (bin centre, ``resolution_ms`` granularity); NaN without clips."""
        if self.clips <= 0:
            return torch.full_like(self.offset_sum, float("nan"))
        cumulative = self.offset_histogram.cumsum(0)
        index = int(torch.searchsorted(cumulative, self.clips / 2))
        return self.offset_sum.new_tensor((index - self.half_bins) * self.resolution_ms)


_PAIRS = ("audio_visual", "audio_truth", "visual_truth")


class EventSync(Metric):
    """Event precision/recall/F1 and timing error of detected audio onsets and visual impacts.

    Three comparisons, micro-averaged over clips (true/false positives and misses are summed):

    * ``audio_visual``: audio onsets against the clip's own visual impacts (the reference side) — usable on
      generated clips, which have no ground truth;
    * ``audio_truth`` and ``visual_truth``: detected audio onsets / visual impacts against the ground-truth
      event times (synthetic data), only for clips whose ``event_times`` are given; true events less than one
      frame apart are merged into one (no frame-rate detector can separate them).

    A detection matches a reference event when they are within ``tolerance_frames / fps`` seconds
    (inclusive, one-to-one, closest pairs first). ``event_timing_error_ms`` is the mean absolute time
    difference of audio onsets and visual impacts matched one-to-one within the wider ``timing_window_ms``.

    Args:
        tolerance_frames: matching tolerance in video frames (default 1 frame: 41.7 ms at 24 fps).
        timing_window_ms: matching window for the timing error.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, tolerance_frames: float = 1.0, timing_window_ms: float = 250.0) -> None:
        super().__init__()
        self.tolerance_frames = tolerance_frames
        self.timing_window_ms = timing_window_ms
        _add_sum_states(self, [f"{kind}_{pair}" for pair in _PAIRS for kind in ("hits", "detections", "references")])
        _add_sum_states(self, ("timing_error_sum", "timing_pairs"))

    def update(self, signals: Sequence[ClipSignals], event_times: Sequence[Tensor] | None = None) -> None:
        """Accumulate counts for each clip; ``event_times`` holds one ``(E,)`` seconds tensor per clip (or None)."""
        if event_times is not None and len(event_times) != len(signals):
            raise ValueError(f"got {len(event_times)} event-time tensors for {len(signals)} clips")
        for index, clip in enumerate(signals):
            tolerance = self.tolerance_frames / clip.fps
            self._count("audio_visual", clip.onset_times, clip.impact_times, tolerance)
            if event_times is not None:
                # events less than a frame apart (a corner bounce, two objects landing together) cannot be
                # told apart by either detector, so they count as one
                truth = merge_close_events(event_times[index], 1 / clip.fps)
                self._count("audio_truth", clip.onset_times, truth, tolerance)
                self._count("visual_truth", clip.impact_times, truth, tolerance)
            pairs = match_events(clip.onset_times, clip.impact_times, self.timing_window_ms / 1000)
            for i, j in pairs:
                self.timing_error_sum += abs(float(clip.onset_times[i] - clip.impact_times[j])) * 1000
            self.timing_pairs += len(pairs)

    def _count(self, pair: str, detected: Tensor, reference: Tensor, tolerance: float) -> None:
        hits = len(match_events(detected, reference, tolerance))
        setattr(self, f"hits_{pair}", getattr(self, f"hits_{pair}") + hits)
        setattr(self, f"detections_{pair}", getattr(self, f"detections_{pair}") + detected.numel())
        setattr(self, f"references_{pair}", getattr(self, f"references_{pair}") + reference.numel())

    def compute(self) -> dict[str, Tensor]:
        """``event_{precision,recall,f1}_{pair}`` for the pairs that saw any event, plus the timing error."""
        result: dict[str, Tensor] = {}
        for pair in _PAIRS:
            hits, detections, references = (getattr(self, f"{kind}_{pair}") for kind in
                                            ("hits", "detections", "references"))
            if detections + references == 0:
                continue
            precision, recall = _ratio(hits, detections), _ratio(hits, references)
            result[f"event_precision_{pair}"] = precision
            result[f"event_recall_{pair}"] = recall
            result[f"event_f1_{pair}"] = _ratio(2 * hits, detections + references)
        result["event_timing_error_ms"] = _ratio(self.timing_error_sum, self.timing_pairs)
        result["event_timing_pairs"] = self.timing_pairs.clone()
        return result


class DeSync(Metric):
    """DeSync (MMAudio's ``av-benchmark``): mean absolute Synchformer offset in seconds over compared windows.

    ``update`` takes the signed offsets ``(B, W)`` of :class:`~omniforcing.metrics.extractors.SynchformerOffsets`
    (the first and the last 4.8-s window of each clip). Only the real Synchformer weights make this DeSync;
    the suite never computes it with stand-in weights.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        _add_sum_states(self, ("absolute_sum", "signed_sum", "windows", "clips"))

    def update(self, offsets: Tensor) -> None:
        """Add the signed offsets ``(B, W)`` in seconds of ``B`` clips."""
        offsets = offsets.double()
        self.absolute_sum += offsets.abs().sum()
        self.signed_sum += offsets.sum()
        self.windows += offsets.numel()
        self.clips += offsets.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """``{"desync": mean |offset| (s), "desync_signed": mean offset (s, > 0: audio ahead), "desync_clips"}``."""
        return {"desync": _ratio(self.absolute_sum, self.windows), "desync_signed": _ratio(self.signed_sum, self.windows),
                "desync_clips": self.clips.clone()}
