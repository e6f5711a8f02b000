"""docs/extending.md is true: its Python blocks, executed as the module ``my_extensions``, and its YAML recipes train
a method with the new backbone and codec through ``omniforcing fit``, export, generate, stream-decode and evaluate,
with no change anywhere in the package."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from omniforcing.cli import main
from omniforcing.codecs import AVCodec, PatchVideoCodec, build_codec
from omniforcing.data.media import read_av
from omniforcing.inference.export import GENERATION_SETTINGS_KEY, TRUSTED_PACKAGES_ENV, export_checkpoint, load_model
from omniforcing.inference.stream_decoding import IncrementalDecoder
from omniforcing.metrics.suite import MetricSuite
from omniforcing.models.protocol import AVBackbone
from omniforcing.types import AVLatents

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "extending.md").read_text()
RECIPES = ROOT / "recipes"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE, flags=re.DOTALL)


@pytest.fixture(scope="module")
def extensions():
    """The page's Python blocks as one module, ``my_extensions`` (as the page says to save them)."""
    module = types.ModuleType("my_extensions")
    sys.modules["my_extensions"] = module
    exec(compile("".join(blocks("python")), "docs/extending.md", "exec"), module.__dict__)  # noqa: S102
    yield module
    del sys.modules["my_extensions"]


def test_the_page_has_a_sketch_and_a_recipe_for_each_extension():
    code, recipes = "".join(blocks("python")), blocks("yaml")
    for name in ("class GainBackbone", "class FrameProjectionCodec", "class PseudoHuberFlowMatching",
                 "class PseudoHuberLitModule", "class MeanColour"):
        assert name in code
    assert [("my_extensions.GainBackbone" in r, "FrameProjectionCodec" in r, "PseudoHuberLitModule" in r)
            for r in recipes] == [(True, False, False), (False, True, False), (False, False, True)]


def test_the_sketched_codec_streams_exactly_and_the_metric_measures(extensions):
    codec = build_codec({"class_path": "omniforcing.codecs.AVCodec", "init_args": {
        "video": {"class_path": "omniforcing.codecs.PatchVideoCodec", "init_args": {"size": 8, "patch_size": 4}},
        "audio": {"class_path": "my_extensions.FrameProjectionCodec", "init_args": {"channels": 8}}}}).eval()
    latents = torch.randn(1, 51, 8)
    decoder = IncrementalDecoder(codec)
    parts = [decoder.decode(AVLatents(None, latents[:, a:b]))[1] for a, b in ((0, 1), (1, 26), (26, 51))]
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(parts, 1), codec.audio.decode(latents)[:, 0])
    assert decoder.history_latents() == (0, 0)
    suite = MetricSuite(["my_extensions.MeanColour"])
    generator = torch.Generator().manual_seed(0)
    real, fake = (torch.rand(4, 9, 3, 8, 8, generator=generator) * 2 - 1 for _ in range(2))
    suite.update(real, None, fps=24, sample_rate=16000, real=True)
    suite.update(fake * 0.5 + 0.4, None, fps=24, sample_rate=16000)
    assert suite.compute()["fd_mean_colour"] > 0.1


def test_the_sketched_method_backbone_and_codec_train_export_and_generate(extensions, tmp_path, monkeypatch,
                                                                          capsys):
    model_recipe, latents_recipe, method_recipe = blocks("yaml")
    files = {}
    for name, text in (("model", model_recipe), ("latents", latents_recipe), ("method", method_recipe)):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(text)
    main(["fit", "-c", str(RECIPES / "base.yaml"), "-c", str(RECIPES / "data/synthetic.yaml"),
          "-c", str(files["method"]), "-c", str(files["latents"]), "-c", str(files["model"]),
          "-c", str(RECIPES / "debug/tiny_cpu.yaml"), "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
          "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    assert torch.load(checkpoint, weights_only=True)[GENERATION_SETTINGS_KEY]["sample_steps"] == 2
    monkeypatch.setenv(TRUSTED_PACKAGES_ENV, "my_extensions")  # export and loading rebuild the classes
    folder = export_checkpoint(checkpoint, tmp_path / "export")
    network, codec, config = load_model(folder)
    assert isinstance(network, extensions.GainBackbone) and isinstance(network, AVBackbone)
    assert isinstance(codec, AVCodec) and isinstance(codec.video, PatchVideoCodec)
    assert isinstance(codec.audio, extensions.FrameProjectionCodec)
    assert config["method"] == "my_extensions.PseudoHuberLitModule"
    out = tmp_path / "clip.mp4"
    main(["generate", "--checkpoint", str(folder), "--prompt", "a ball", "--seconds", "1", "--out", str(out),
          "--device", "cpu", "--threads", "1"])
    assert "whole clip at once" in capsys.readouterr().out
    assert read_av(out).video.shape == (25, 32, 32, 3)
