"""Exports record the backbone's class and rebuild it: our backbone, a second class path, or a user's backbone that
is not a ``DualStreamTransformer`` at all; old exports without a class path still load, bad ones fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from omniforcing.cli import USER_ERROR_EXIT_CODE, main
from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.data.media import read_av
from omniforcing.errors import InvalidInputError
from omniforcing.inference.export import (
    CONFIG_NAME,
    DEFAULT_BACKBONE,
    GENERATION_SETTINGS_KEY,
    TRUSTED_PACKAGES_ENV,
    instantiate,
    load_exported,
    load_model,
    model_from_checkpoint,
    save_exported,
)
from omniforcing.models import DualStreamTransformer
from omniforcing.models.protocol import AVBackbone

NETWORK = dict(video_channels=384, video_grid=[2, 2], audio_channels=32, video_width=32, audio_width=16, depth=1,
               video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=24,
               causal=True)
VIDEO, AUDIO = {"size": 8, "patch_size": 4}, {"n_mels": 8, "griffin_lim_iters": 2, "nnls_iters": 2}
CODEC_TREE = {"class_path": "omniforcing.codecs.AVCodec", "init_args": {
    "video": {"class_path": "omniforcing.codecs.PatchVideoCodec", "init_args": VIDEO},
    "audio": {"class_path": "omniforcing.codecs.MelAudioCodec", "init_args": AUDIO}}}
WRAPPED = f"{__name__}.WrappedBackbone"


class WrappedBackbone(nn.Module):
    """Test-only second backbone: not a ``DualStreamTransformer``, it owns one (as the LTX-2 adapter owns the
    diffusers transformer) and offers the :class:`AVBackbone` members, with a learned output scale of its own."""

    def __init__(self, width: int = 32, causal: bool = True, output_scale: float = 1.0) -> None:
        super().__init__()
        self.core = DualStreamTransformer(**{**NETWORK, "video_width": width, "causal": causal})
        self.output_scale = nn.Parameter(torch.tensor(output_scale))
        for name in ("video_channels", "video_grid", "audio_channels", "prefix", "causal", "prefix_position",
                     "num_audio_sinks"):
            setattr(self, name, getattr(self.core, name))

    step_size_conditioning = property(lambda self: self.core.step_size_conditioning)
    device = property(lambda self: self.core.device)
    dtype = property(lambda self: self.core.dtype)
    depth = property(lambda self: self.core.depth)
    compiled = property(lambda self: self.core.compiled)

    def layout(self, num_video=None, num_audio=None):
        return self.core.layout(num_video, num_audio)

    def encode_text(self, captions, drop=None):
        return self.core.encode_text(captions, drop)

    def new_cache(self, batch_size, **kwargs):
        return self.core.new_cache(batch_size, **kwargs)

    def compile_core(self, enabled=True, mode=None, backend="inductor"):
        self.core.compile_core(enabled, mode, backend)

    def parameter_group(self, name):
        return "shared" if name == "output_scale" else self.core.parameter_group(name.removeprefix("core."))

    def forward(self, video, audio, t_video, t_audio, text, **kwargs) -> tuple[Tensor | None, Tensor | None]:
        v, a = self.core(video, audio, t_video, t_audio, text, **kwargs)
        return (None if v is None else v * self.output_scale), (None if a is None else a * self.output_scale)


def perturbed(network: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for param in network.parameters():  # a fresh model outputs zeros: gates start closed
            param.add_(torch.randn_like(param) * 0.2)
    return network.eval()


def codec() -> AVCodec:
    return AVCodec(PatchVideoCodec(**VIDEO), MelAudioCodec(**AUDIO)).eval()


def velocities(network: nn.Module) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    video, audio = torch.randn(1, 4, 384, 2, 2, generator=generator), torch.randn(1, 26, 32, generator=generator)
    with torch.no_grad():
        return network(video, audio, torch.full((1, 4), 0.5), torch.full((1, 26), 0.5),
                       network.encode_text(["a ball"]), causal=False)


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    assert type(a) is type(b)
    for x, y in zip(velocities(a), velocities(b), strict=True):
        torch.testing.assert_close(x, y)


@pytest.fixture
def trusted(monkeypatch):
    monkeypatch.setenv(TRUSTED_PACKAGES_ENV, __name__.split(".")[0])


def test_a_users_backbone_round_trips_through_export_and_satisfies_the_protocol(tmp_path, trusted):
    network = perturbed(WrappedBackbone(width=16, output_scale=0.5))
    assert isinstance(network, AVBackbone) and not isinstance(network, DualStreamTransformer)
    tree = {"class_path": WRAPPED, "init_args": {"width": 16, "causal": True, "output_scale": 0.5}}
    folder = save_exported(tmp_path / "export", network, codec(), {"network": tree, "codec": CODEC_TREE})
    loaded, _, config = load_exported(folder)
    assert config["network"]["class_path"] == WRAPPED
    assert_same_model(network, loaded)


def test_a_network_tree_without_class_path_records_the_networks_class(tmp_path):
    network = perturbed(DualStreamTransformer(**NETWORK))
    folder = save_exported(tmp_path / "export", network, codec(), {"network": {"init_args": NETWORK},
                                                                   "codec": CODEC_TREE})
    recorded = json.loads((folder / CONFIG_NAME).read_text())["network"]
    assert recorded == {"class_path": "omniforcing.models.transformer.DualStreamTransformer", "init_args": NETWORK}
    assert_same_model(network, load_exported(folder)[0])


def test_export_refuses_a_class_path_that_is_not_the_networks_class(tmp_path, trusted):
    network = perturbed(DualStreamTransformer(**NETWORK))
    with pytest.raises(InvalidInputError, match="names network class .*WrappedBackbone, but the network is a "
                                                "omniforcing.models.transformer.DualStreamTransformer"):
        save_exported(tmp_path / "export", network, codec(),
                      {"network": {"class_path": WRAPPED, "init_args": {}}, "codec": CODEC_TREE})


def test_an_old_export_without_class_path_loads_as_the_default_backbone(tmp_path):
    network = perturbed(DualStreamTransformer(**NETWORK))
    folder = save_exported(tmp_path / "export", network, codec(), {"network": NETWORK, "codec": CODEC_TREE,
                                                                   "method_args": {"times": [1.0, 0.5]}})
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["network"] = NETWORK  # as exports wrote it before the class was recorded: init args alone
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    loaded, _, loaded_config = load_exported(folder)
    assert loaded_config["network"]["class_path"] == DEFAULT_BACKBONE
    assert_same_model(network, loaded)


@pytest.mark.parametrize("name", ["student", "teacher"])
def test_the_shipped_reference_models_still_load(name):
    network, _, config = load_model(Path(__file__).resolve().parents[2] / "checkpoints" / "reference" / name)
    assert isinstance(network, DualStreamTransformer) and network.causal == (name == "student")
    assert config["network"]["class_path"] == "omniforcing.models.DualStreamTransformer"


@pytest.mark.parametrize(("class_path", "message"), [
    ("omniforcing.models.NoSuchBackbone", "module 'omniforcing.models' has no class 'NoSuchBackbone'"),
    ("omniforcing.no_such_module.Backbone", "cannot import module 'omniforcing.no_such_module'"),
    ("omniforcing.codecs.PatchVideoCodec", None),  # a module, but no backbone: its init args do not fit
    ("os.system", "refusing to instantiate 'os.system'"),
    (WRAPPED, "refusing to instantiate"),  # a user's package must be trusted explicitly
])
def test_bad_network_class_paths_are_one_line_user_errors(tmp_path, monkeypatch, class_path, message):
    monkeypatch.delenv(TRUSTED_PACKAGES_ENV, raising=False)
    network = perturbed(DualStreamTransformer(**NETWORK))
    folder = save_exported(tmp_path / "export", network, codec(), {"network": {"init_args": NETWORK},
                                                                   "codec": CODEC_TREE})
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["network"]["class_path"] = class_path
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match=message or "cannot be built from its init_args") as error:
        load_exported(folder)
    assert "\n" not in str(error.value) and "network" in str(error.value)


def lightning_checkpoint(path: Path, network: nn.Module, network_tree: dict, declared: dict | None) -> Path:
    """A checkpoint as ``omniforcing fit`` writes it (hyperparameters of LightningCLI, prefixed weights)."""
    state = {f"network.{k}": v for k, v in network.state_dict().items()}
    state.update({f"codec.{k}": v for k, v in codec().state_dict().items()})
    hparams = {"_class_path": "omniforcing.training.SelfForcingLitModule", "network": network_tree,
               "codec": CODEC_TREE, "teacher_from": "runs/teacher.ckpt", "times": None, "context_time": 0.1,
               "objective": {"class_path": "omniforcing.methods.DistributionMatching", "init_args": {}}}
    checkpoint = {"hyper_parameters": hparams, "state_dict": state, "global_step": 7}
    if declared is not None:
        checkpoint[GENERATION_SETTINGS_KEY] = declared
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_exports_its_backbone_class_and_the_settings_its_method_declared(tmp_path, trusted):
    network = perturbed(WrappedBackbone(width=16))
    tree = {"class_path": WRAPPED, "init_args": {"width": 16, "causal": True, "output_scale": 1.0}}
    declared = {"modality": "joint", "times": [1.0, 0.6, 0.2], "context_time": 0.1}
    path = lightning_checkpoint(tmp_path / "last.ckpt", network, tree, declared)
    loaded, _, config = model_from_checkpoint(path)
    assert config["network"] == tree and config["method_args"] == declared
    assert_same_model(network, loaded)


def test_an_older_checkpoint_without_declared_settings_keeps_its_plain_hyperparameters(tmp_path):
    network = perturbed(DualStreamTransformer(**NETWORK))
    path = lightning_checkpoint(tmp_path / "last.ckpt", network, NETWORK, None)  # init args alone, too
    loaded, _, config = model_from_checkpoint(path)
    assert config["network"]["class_path"] == DEFAULT_BACKBONE
    assert config["method_args"] == {"times": None, "context_time": 0.1}
    assert_same_model(network, loaded)


def test_generate_streams_a_users_backbone_from_its_export(tmp_path, trusted, capsys):
    network = perturbed(WrappedBackbone(width=16))
    tree = {"class_path": WRAPPED, "init_args": {"width": 16, "causal": True, "output_scale": 1.0}}
    folder = save_exported(tmp_path / "export", network, codec(),
                           {"network": tree, "codec": CODEC_TREE, "method_args": {"times": [1.0, 0.5]}})
    out = tmp_path / "clip.mp4"
    main(["generate", "--checkpoint", str(folder), "--prompt", "a ball", "--seconds", "1", "--out", str(out),
          "--window", "2", "--device", "cpu", "--threads", "1"])
    assert "real-time factor" in capsys.readouterr().out
    assert read_av(out).video.shape == (25, 8, 8, 3)


def test_generate_reports_an_unknown_backbone_class_in_one_line(tmp_path, capsys):
    network = perturbed(DualStreamTransformer(**NETWORK))
    folder = save_exported(tmp_path / "export", network, codec(), {"network": NETWORK, "codec": CODEC_TREE})
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["network"]["class_path"] = "omniforcing.models.ltx2.NoSuchBackbone"
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--checkpoint", str(folder), "--prompt", "a ball", "--seconds", "1", "--out",
              str(tmp_path / "clip.mp4"), "--device", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == USER_ERROR_EXIT_CODE and len(errors) == 1 and "Traceback" not in err
    assert "NoSuchBackbone" in errors[0]


LTX2_TREE = {"class_path": "omniforcing.models.ltx2.LTX2Backbone", "init_args": {
    "video_grid": [2, 2], "causal": True, "num_audio_sinks": 2,
    "architecture": {"num_layers": 1, "in_channels": 384, "audio_in_channels": 32, "caption_channels": 16},
    "text_encoder": {"class_path": "omniforcing.models.ltx2.BytePromptEncoder",
                     "init_args": {"width": 16, "text_width": 16, "depth": 1, "heads": 2, "max_length": 24}}}}


def test_the_ltx2_backbone_round_trips_through_export_and_streams(tmp_path, capsys):
    network = perturbed(instantiate(LTX2_TREE, nn.Module, "network"))
    assert type(network).__name__ == "LTX2Backbone" and isinstance(network, AVBackbone)
    folder = save_exported(tmp_path / "export", network, codec(),
                           {"network": LTX2_TREE, "codec": CODEC_TREE, "method_args": {"times": [1.0, 0.5]}})
    loaded, _, config = load_exported(folder)
    assert config["network"]["class_path"] == LTX2_TREE["class_path"]
    assert_same_model(network, loaded)
    out = tmp_path / "clip.mp4"
    main(["generate", "--checkpoint", str(folder), "--prompt", "a ball", "--seconds", "1", "--out", str(out),
          "--window", "2", "--device", "cpu", "--threads", "1"])
    assert "real-time factor" in capsys.readouterr().out
    assert read_av(out).video.shape == (25, 8, 8, 3)
