"""FrechetDistance Metric: accumulation, naming rule, cached real statistics, keep_features, 2-process merge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from omniforcing.metrics.extractors import FeatureExtractor, PreprocessingSpec
from omniforcing.metrics.frechet import frechet_distance_from_features
from omniforcing.metrics.frechet_metric import FrechetAudioDistance, FrechetDistance, FrechetVideoDistance
from omniforcing.metrics.sync import ClipSignals
from omniforcing.metrics.sync_metrics import AVAlign, AVSyncOffset, EventSync


class FirstValues(FeatureExtractor):
    """Test double: the first ``dim`` values of each clip as its features."""

    weight_sha256 = None

    def __init__(self, *, modality: str = "video", is_reference: bool = False, name: str = "first_values",
                 dim: int = 6) -> None:
        super().__init__()
        self.modality, self.is_reference, self.name, self.dim = modality, is_reference, name, dim

    @property
    def preprocessing(self) -> PreprocessingSpec:
        return {"take": "first values"}

    def forward(self, media: Tensor, rate: float) -> Tensor:
        return media.flatten(1)[:, :self.dim].float()


def _data(seed: int, n: int = 64, dim: int = 6) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(n, 1, dim, generator=generator)
    fake = torch.randn(n, 1, dim, generator=generator) * 1.3 + 0.4
    return real, fake


def test_equals_direct_computation_and_two_halves_equal_one_update():
    real, fake = _data(0)
    once, halves = FrechetDistance(FirstValues()), FrechetDistance(FirstValues())
    once.update(real, 1.0, real=True)
    once.update(fake, 1.0, real=False)
    for part in (slice(0, 20), slice(20, None)):
        halves.update(real[part], 1.0, real=True)
        halves.update(fake[part], 1.0, real=False)
    expected = frechet_distance_from_features(real.flatten(1), fake.flatten(1), method="eigh")
    assert float(once.compute()) == pytest.approx(float(expected), rel=1e-10)
    assert float(halves.compute()) == pytest.approx(float(once.compute()), rel=1e-12)
    assert once.real_sum.dtype == torch.float64 and once.real_outer_sum.shape == (6, 6)


def test_naming_rule_only_reference_extractors_give_fvd_or_fad():
    assert FrechetVideoDistance(FirstValues(is_reference=True)).name == "fvd"
    assert FrechetAudioDistance(FirstValues(modality="audio", is_reference=True)).name == "fad"
    assert FrechetVideoDistance(FirstValues(name="video_stats")).name == "fd_video_stats"
    assert FrechetAudioDistance(FirstValues(modality="audio", name="vggish")).name == "fd_vggish"
    # a non-reference extractor cannot obtain the reserved names, whatever it is called
    assert FrechetDistance(FirstValues(name="fvd")).name == "fd_fvd"
    assert FrechetDistance("video_stats").name == "fd_video_stats"
    assert FrechetDistance("audio_stats").name == "fd_audio_stats"


def test_modality_is_checked():
    with pytest.raises(ValueError, match="needs a audio extractor"):
        FrechetAudioDistance(FirstValues(modality="video"))


def test_too_few_samples_and_bad_arguments_give_clear_errors():
    metric = FrechetDistance(FirstValues())
    real, fake = _data(1)
    metric.update(real, 1.0, real=True)
    metric.update(fake[:1], 1.0, real=False)
    with pytest.raises(ValueError, match="at least 2 real and 2 generated"):
        metric.compute()
    with pytest.raises(ValueError, match="either media with its rate, or features"):
        metric.update(real, real=True)
    with pytest.raises(ValueError, match=r"features must be \(N, 6\)"):
        metric.update(features=torch.zeros(3, 5), real=True)


def test_reset_keeps_real_statistics_when_asked():
    real, fake = _data(2)
    metric = FrechetDistance(FirstValues(), reset_real_features=False)
    metric.update(real, 1.0, real=True)
    metric.update(fake, 1.0, real=False)
    first = float(metric.compute())
    metric.reset()
    assert int(metric.real_count) == 64 and int(metric.fake_count) == 0
    metric.update(features=fake.flatten(1), real=False)
    assert float(metric.compute()) == pytest.approx(first, rel=1e-12)


def test_saved_statistics_load_pinned_and_check_the_fingerprint(tmp_path: Path):
    real, fake = _data(3)
    source = FrechetDistance(FirstValues())
    source.update(real, 1.0, real=True)
    source.save_real_stats(tmp_path / "real.npz", description="unit test real set")
    with np.load(tmp_path / "real.npz", allow_pickle=False) as data:
        assert str(data["meta_description"]) == "unit test real set"
    target = FrechetDistance(FirstValues())
    target.load_real_stats(tmp_path / "real.npz")
    target.update(fake, 1.0, real=False)
    expected = frechet_distance_from_features(real.flatten(1), fake.flatten(1))
    assert float(target.compute()) == pytest.approx(float(expected), rel=1e-10)
    target.reset()
    assert target.real_stats().count == 64  # pinned statistics survive reset
    with pytest.raises(ValueError, match="pinned"):
        target.update(real, 1.0, real=True)
    other = FrechetDistance(FirstValues(name="different"))
    with pytest.raises(ValueError, match="fingerprint"):
        other.load_real_stats(tmp_path / "real.npz")


def test_keep_features_gives_sample_space_distance_kernel_distance_and_fd_infinity():
    generator = torch.Generator().manual_seed(4)
    dim = 20
    real, fake = torch.randn(12, 1, dim, generator=generator), torch.randn(15, 1, dim, generator=generator) + 1
    metric = FrechetDistance(FirstValues(dim=dim), keep_features=True)
    metric.update(real, 1.0, real=True)
    metric.update(fake, 1.0, real=False)
    stats_only = FrechetDistance(FirstValues(dim=dim))
    stats_only.update(real, 1.0, real=True)
    stats_only.update(fake, 1.0, real=False)
    assert float(metric.compute()) == pytest.approx(float(stats_only.compute()), rel=1e-8)
    mean, _ = metric.kernel_distance(subsets=5)
    assert mean > 0
    assert np.isfinite(metric.fd_infinity(num_points=4, min_samples=5).value)
    with pytest.raises(ValueError, match="keep_features"):
        stats_only.kernel_distance()


def _signals(seed: int) -> list[ClipSignals]:
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for _ in range(3):
        onsets = torch.sort(torch.rand(4, generator=generator, dtype=torch.float64) * 2).values
        envelope = torch.rand(200, generator=generator)
        clips.append(ClipSignals(24.0, torch.rand(49, generator=generator), torch.rand(49, generator=generator),
                                 envelope, 100.0, onsets, onsets + 0.01, onsets[:3] + 0.02))
    return clips


def _run_metrics(rank_parts: list[int]) -> dict[str, float]:
    """Update every metric with the data parts in ``rank_parts`` and compute (synced if distributed)."""
    frechet = FrechetDistance(FirstValues())
    av_align, offset, events = AVAlign(), AVSyncOffset(), EventSync()
    for part in rank_parts:
        real, fake = _data(10 + part, n=16)
        frechet.update(real, 1.0, real=True)
        frechet.update(fake, 1.0, real=False)
        signals = _signals(part)
        av_align.update(signals)
        offset.update(signals)
        events.update(signals, [clip.onset_times for clip in signals])
    values = {"fd": float(frechet.compute()), "n_real": float(frechet.real_stats().count)}
    for metric in (av_align, offset, events):
        values.update({key: float(value) for key, value in metric.compute().items()})
    return values


def test_merging_states_with_their_reductions_equals_one_metric():
    # the reduction DDP applies at compute (dist_reduce_fx), without processes; the gloo test below is slow
    whole, first, second = (FrechetDistance(FirstValues()) for _ in range(3))
    sync_whole, sync_first, sync_second = EventSync(), EventSync(), EventSync()
    for part, (metric, sync) in enumerate([(first, sync_first), (second, sync_second)]):
        real, fake = _data(20 + part, n=16)
        signals = _signals(part)
        for target, target_sync in ((metric, sync), (whole, sync_whole)):
            target.update(real, 1.0, real=True)
            target.update(fake, 1.0, real=False)
            target_sync.update(signals, [clip.onset_times for clip in signals])
    first.merge_state(second)
    sync_first.merge_state(sync_second)
    assert float(first.compute()) == pytest.approx(float(whole.compute()), rel=1e-12)
    merged, expected = sync_first.compute(), sync_whole.compute()
    assert {key: float(value) for key, value in merged.items()} == pytest.approx(
        {key: float(value) for key, value in expected.items()}, rel=1e-12)


def _worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    values = _run_metrics([rank, rank + 2])
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(values))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_merge_equals_one_process(tmp_path: Path):
    """Two gloo processes, each with half of the clips, compute what one process computes with all of them.

    About 16 s on 2 shared CPU cores, mostly the two interpreters importing torch and torchmetrics.
    """
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = _run_metrics([0, 2, 1, 3])
    assert single["n_real"] == 64
    for rank in range(2):
        merged = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert merged.keys() == single.keys()
        for key, value in single.items():
            assert merged[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
