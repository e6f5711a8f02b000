"""Every supported recipe combination parses and instantiates; model size files match the presets."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml
from jsonargparse._deprecated import JsonargparseDeprecationWarning

from omniforcing.cli import main
from omniforcing.errors import InvalidInputError
from omniforcing.models.presets import PRESETS
from omniforcing.training.cli import OmniCLI, check_recipe_order, run_lightning_cli

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


def test_compile_recipe_appends_the_callback_to_base_callbacks(tmp_path):
    files = ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml", "model/tiny.yaml",
             "strategy/compile.yaml"]
    cli = OmniCLI(run=False, args=[*_args(files), f"--trainer.logger.init_args.save_dir={tmp_path}"], **_cli_kwargs())
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert "CompileBackbones" in names and "EMA" in names and "ModelCheckpoint" in names  # appended, not replaced
    compile_callback = next(c for c in cli.trainer.callbacks if type(c).__name__ == "CompileBackbones")
    assert (compile_callback.mode, compile_callback.backend, compile_callback.only) == (None, "inductor", None)


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


TEACHER_FILES = ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml", "model/tiny.yaml"]


@pytest.mark.parametrize("size_first", [False, True], ids=["method-then-size", "size-then-method"])
def test_recipe_order_works_or_fails_in_one_line_naming_both_files(size_first, capsys):
    files = list(TEACHER_FILES)
    if size_first:  # the model-size recipe before the method recipe that chooses the network class
        files.remove("model/tiny.yaml")
        files.insert(files.index("teacher/joint.yaml"), "model/tiny.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(files), "--print_config"])
    out, err = capsys.readouterr()
    if not size_first:
        assert exit_info.value.code in (0, None)
        network = yaml.safe_load(out)["model"]["init_args"]["network"]["init_args"]
        assert network["video_width"] == PRESETS["tiny"]["video_width"]
        return
    tiny, joint = RECIPES / "model/tiny.yaml", RECIPES / "teacher/joint.yaml"
    assert exit_info.value.code == 2 and err.splitlines() == [
        f"error: recipe order: {tiny} must come after {joint} ({joint} chooses model.class_path, {tiny} only sets "
        "its init_args)"]


def test_recipe_order_check_follows_nested_class_choices(tmp_path):
    size, method, other = tmp_path / "size.yaml", tmp_path / "method.yaml", tmp_path / "other.yaml"
    size.write_text("model:\n  init_args:\n    network:\n      init_args: {depth: 2}\n")
    method.write_text("model:\n  class_path: a.Method\n  init_args:\n    network:\n      class_path: a.Net\n")
    other.write_text("trainer: {max_steps: 3}\n")
    check_recipe_order(["-c", str(method), "--config", str(size), "-c", str(other)])
    check_recipe_order(["-c", str(size)])  # nothing later chooses the class: the parser's own error applies
    check_recipe_order(["-c", str(tmp_path / "missing.yaml"), "-c", str(method)])  # unreadable: left to the parser
    with pytest.raises(InvalidInputError, match=f"{size} must come after {method}"):
        check_recipe_order([f"--config={size}", "-c", str(other), "-c", str(method)])


def test_a_run_prints_no_jsonargparse_deprecation_warning(tmp_path, monkeypatch):
    """LightningCLI calls jsonargparse APIs deprecated for 5.0; OmniCLI uses the replacements, so a fit run (parse,
    instantiate with Lightning's instantiators, save config.yaml, log hyperparameters) warns about none of them."""
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "all")  # every occurrence, not only the first
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", *_args([*TEACHER_FILES, "debug/tiny_cpu.yaml"]), f"--trainer.default_root_dir={tmp_path}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=1",
              "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"])
    assert list(tmp_path.rglob("config.yaml"))  # the run did save its config
    deprecations = [str(w.message) for w in caught if isinstance(w.message, JsonargparseDeprecationWarning)]
    assert deprecations == []


def _values_of(node, keys: set[str]):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys:
                yield key, value
            yield from _values_of(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _values_of(item, keys)


def test_no_recipe_writes_out_the_default_few_step_times():
    """The students' few-step grid lives in one place (``DEFAULT_FEW_STEP_TIMES``, issue 12.1): a recipe names
    times only to change them (an ablation), so changing the default is one edit."""
    from omniforcing.sampling.schedule import DEFAULT_FEW_STEP_TIMES

    paths = sorted(RECIPES.rglob("*.yaml"))
    assert len(paths) > 20
    for path in paths:
        for key, value in _values_of(yaml.safe_load(path.read_text()), {"times", "few_step_times", "video_times"}):
            assert [float(t) for t in value] != list(DEFAULT_FEW_STEP_TIMES), f"{path.relative_to(RECIPES)}: {key}"
