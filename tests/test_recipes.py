"""Every supported recipe combination parses and instantiates; model size files match the presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from omniforcing.models.presets import PRESETS
from omniforcing.training.cli import OmniCLI, run_lightning_cli

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# (files in composition order). Other method families add their combinations in their own test files.
COMBINATIONS = [
    ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml", "model/tiny.yaml"],
    ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "teacher/video_only.yaml", "latents/patch.yaml",
     "model/tiny.yaml"],
    ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "teacher/audio_only.yaml", "latents/patch.yaml",
     "model/tiny.yaml"],
    ["base.yaml", "data/shards.yaml", "teacher/joint.yaml", "latents/patch.yaml", "model/small.yaml"],
    ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml", "model/tiny.yaml",
     "strategy/ddp.yaml"],
    ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml", "model/tiny.yaml",
     "debug/tiny_cpu.yaml"],
    # the default latent space (shipped learned codec) at every size
    ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/learned.yaml", "model/small.yaml"],
    ["base.yaml", "data/shards.yaml", "teacher/joint.yaml", "teacher/video_only.yaml", "latents/learned.yaml",
     "model/base.yaml"],
    ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/learned.yaml", "model/large.yaml"],
]


def _args(files: list[str]) -> list[str]:
    out: list[str] = []
    for name in files:
        out += ["-c", str(RECIPES / name)]
    return out


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda f: "+".join(Path(x).stem for x in f))
def test_recipe_combination_parses_and_instantiates(files, tmp_path):
    cli = OmniCLI(run=False, args=[*_args(files), f"--trainer.logger.init_args.save_dir={tmp_path}"],
                  **_cli_kwargs())
    assert cli.model.clip == cli.datamodule.clip  # linked, stated once
    assert type(cli.model).__name__ == "TeacherLitModule"


def _cli_kwargs() -> dict:
    import lightning as L

    from omniforcing.training.base import AVLitModule

    return dict(model_class=AVLitModule, datamodule_class=L.LightningDataModule, subclass_mode_model=True,
                subclass_mode_data=True)


def test_fsdp_recipe_parses(capsys):
    with pytest.raises(SystemExit):
        run_lightning_cli(["fit", *_args(["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml",
                                          "latents/patch.yaml", "model/base.yaml", "strategy/fsdp.yaml"]),
                           "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"]["class_path"].endswith("FSDPStrategy")
    assert printed["model"]["init_args"]["network"]["init_args"]["depth"] == PRESETS["base"]["depth"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_size_files_equal_the_presets(name):
    data = yaml.safe_load((RECIPES / "model" / f"{name}.yaml").read_text())
    assert data["model"]["init_args"]["network"]["init_args"] == PRESETS[name]


def test_unmatched_codec_and_network_fail_with_a_clear_message(tmp_path):
    args = _args(["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml",
                  "model/tiny.yaml"])
    with pytest.raises(ValueError, match="latent geometry"):
        OmniCLI(run=False, args=[*args, "--model.init_args.network.init_args.video_channels=16",
                                 f"--trainer.logger.init_args.save_dir={tmp_path}"], **_cli_kwargs())


def test_batch_counts_reach_the_trainer_as_counts(tmp_path):
    """jsonargparse turns `int | float` into float when Lightning is imported; 2.0 would mean twice the epoch."""
    files = ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml", "model/tiny.yaml"]
    cli = OmniCLI(run=False, args=[*_args(files), f"--trainer.logger.init_args.save_dir={tmp_path}",
                                   "--trainer.val_check_interval=50", "--trainer.limit_train_batches=0.5"],
                  **_cli_kwargs())
    assert cli.trainer.limit_val_batches == 2 and isinstance(cli.trainer.limit_val_batches, int)  # base.yaml
    assert cli.trainer.val_check_interval == 50 and isinstance(cli.trainer.val_check_interval, int)
    assert cli.trainer.limit_train_batches == 0.5  # a fraction stays a fraction


@pytest.mark.parametrize("data", [["data/synthetic.yaml", "codec/synthetic_scenes.yaml"], ["data/shards.yaml"]],
                         ids=["synthetic", "shards"])
@pytest.mark.parametrize("codec", ["codec/video_ae.yaml", "codec/audio_ae.yaml"], ids=["video_ae", "audio_ae"])
def test_codec_recipes_parse_and_instantiate_with_either_data_source(codec, data, tmp_path):
    import lightning as L

    # codec training is not a method (no AVLitModule): the real CLI accepts any LightningModule
    cli = OmniCLI(run=False, args=[*_args(["base.yaml", *data, codec]),
                                   f"--trainer.logger.init_args.save_dir={tmp_path}"],
                  **{**_cli_kwargs(), "model_class": L.LightningModule})
    assert type(cli.model).__name__ == "CodecLitModule" and cli.model.clip == cli.datamodule.clip
