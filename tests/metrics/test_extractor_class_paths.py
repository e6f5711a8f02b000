"""Feature extractors chosen by class path: a user's extractor (defined here) works without any change to the
package, in :func:`build_extractor` and in :class:`MetricSuite`; bad class paths are one-line user errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from omniforcing.errors import InvalidInputError
from omniforcing.metrics.extractors import FeatureExtractor, PreprocessingSpec, build_extractor
from omniforcing.metrics.suite import MetricSuite

CLASS_PATH = f"{__name__}.MeanColour"


class MeanColour(FeatureExtractor):
    """Test-only extractor: the mean RGB of each clip, scaled (so ``scale`` shows that init args arrive)."""

    name = "mean_colour"
    modality = "video"
    dim = 3
    is_reference = False
    weight_sha256 = None

    def __init__(self, scale: float = 1.0, path: str | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.path = path

    @property
    def preprocessing(self) -> PreprocessingSpec:
        return {"features": "mean rgb", "scale": self.scale}

    def forward(self, media: Tensor, rate: float) -> Tensor:
        video = media.float() / 127.5 - 1 if media.dtype == torch.uint8 else media.float()
        return video.mean(dim=(1, 3, 4)) * self.scale  # (B, 3)


def test_a_class_path_or_a_spec_dict_builds_the_users_extractor():
    assert isinstance(build_extractor(CLASS_PATH), MeanColour)
    built = build_extractor({"class_path": CLASS_PATH, "init_args": {"scale": 2.0}})
    assert built.scale == 2.0
    # weight files are passed by extractor name as its `path` argument, unless the spec sets one
    assert build_extractor(CLASS_PATH, weight_paths={"mean_colour": "w.pt"}).path == "w.pt"
    spec = {"class_path": CLASS_PATH, "init_args": {"path": "own.pt"}}
    assert build_extractor(spec, weight_paths={"mean_colour": "w.pt"}).path == "own.pt"


def test_the_suite_computes_a_frechet_distance_of_a_class_path_extractor():
    suite = MetricSuite([{"class_path": CLASS_PATH, "init_args": {"scale": 2.0}}, "sync"])
    assert suite.names == ["fd_mean_colour"]
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(6, 9, 3, 8, 8, generator=generator) * 2 - 1
    fake = (torch.rand(6, 9, 3, 8, 8, generator=generator) * 2 - 1) * 0.5 + 0.3
    suite.update(real, None, fps=24, sample_rate=16000, real=True)
    suite.update(fake, None, fps=24, sample_rate=16000)
    values = suite.compute()
    assert values["fd_mean_colour"] > 0.1 and values["fd_mean_colour_n_fake"] == 6
    suite.reset(include_real=True)
    suite.update(real, None, fps=24, sample_rate=16000, real=True)
    suite.update(real, None, fps=24, sample_rate=16000)
    assert suite.compute()["fd_mean_colour"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize(("spec", "message"), [
    ("clip", "unknown extractor 'clip'; choose from video_stats, audio_stats, i3d, vggish"),
    ("no_such_package.Features", "cannot import module 'no_such_package'"),
    (f"{__name__}.Absent", f"module '{__name__}' has no class 'Absent'"),
    ("omniforcing.codecs.PatchVideoCodec", "is not a FeatureExtractor subclass"),
    ({"init_args": {}}, "has no 'class_path'"),
])
def test_bad_specs_are_one_line_user_errors(spec, message):
    with pytest.raises(InvalidInputError, match=message) as error:
        build_extractor(spec)
    assert "\n" not in str(error.value)


def test_the_suite_names_unknown_metrics_and_rejects_two_extractors_of_one_name():
    with pytest.raises(InvalidInputError, match=r"unknown metrics \['fvd'\]"):
        MetricSuite(["fvd", "sync"])
    with pytest.raises(InvalidInputError, match="two metrics use extractors named 'mean_colour'"):
        MetricSuite([CLASS_PATH, {"class_path": CLASS_PATH, "init_args": {"scale": 3.0}}])
