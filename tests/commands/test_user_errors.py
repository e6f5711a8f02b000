"""The error contract of every subcommand: a user error is one line on stderr and exit code 2, no traceback;
``--debug`` / ``OMNIFORCING_DEBUG=1`` show the traceback; anything else (a bug) keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Lightning is imported at collection on purpose: its log handler binds sys.stderr when Lightning is imported,
# and bound to one test's captured stream it would write to a closed file in the tests after it.
import lightning.pytorch  # noqa: F401
import pytest

import omniforcing.commands.data
from omniforcing.cli import main
from omniforcing.errors import MissingInputError
from user_errors import user_error

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture
def unreadable_checkpoint(tmp_path: Path) -> Path:
    """A ``.ckpt`` file that is not a checkpoint."""
    path = tmp_path / "unreadable.ckpt"
    path.write_bytes(b"not a checkpoint at all")
    return path


def test_data_subcommands(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    assert "no shard files match" in user_error(capsys, ["data", "inspect", missing])
    assert f"source folder {missing} does not exist" in user_error(capsys, ["data", "pack", missing, "--out",
                                                                             str(tmp_path / "out")])
    assert "--clips must be > 0, got 0" in user_error(capsys, ["data", "synth", "--out", str(tmp_path / "s"),
                                                               "--clips", "0", "--seconds", "1"])
    assert "--seconds must be > 0, got -3" in user_error(capsys, ["data", "synth", "--out", str(tmp_path / "s"),
                                                                  "--clips", "1", "--seconds", "-3"])
    assert "--workers must be >= 0" in user_error(capsys, ["data", "pack", str(tmp_path), "--out", str(tmp_path / "out"),
                                                           "--workers", "-1"])
    assert "--width must be > 0, got 0" in user_error(capsys, ["data", "pack", str(tmp_path), "--out",
                                                               str(tmp_path / "out"), "--width", "0"])
    assert "sample_rate must be a multiple of 25" in user_error(capsys, [
        "data", "synth", "--out", str(tmp_path / "s"), "--clips", "1", "--seconds", "1", "--sample-rate", "16001"])
    assert "no shard files match" in user_error(capsys, ["data", "encode", "--in", missing, "--codec",
                                                         str(RECIPES / "latents/patch.yaml"), "--out", missing])
    assert "no shard files match" in user_error(capsys, ["data", "codec-stats", missing, "--codec",
                                                         "omniforcing.codecs.MelAudioCodec", "--out", "x.safetensors"])
    assert "no exported model folder or .ckpt file at nosuch" in user_error(capsys, [
        "data", "ode-pairs", "--teacher", "nosuch", "--out", str(tmp_path / "pairs"), "--count", "2"])
    assert "--count must be > 0" in user_error(capsys, ["data", "ode-pairs", "--teacher", "nosuch", "--out",
                                                        str(tmp_path / "pairs"), "--count", "0"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "s").exists()


def test_data_pack_of_an_empty_or_all_bad_folder_fails_and_writes_nothing(tmp_path, capsys):
    empty, bad = tmp_path / "empty", tmp_path / "bad"
    empty.mkdir()
    bad.mkdir()
    (bad / "fake.mp4").write_bytes(b"\x00" * 64)
    (bad / "zero.mov").write_bytes(b"")
    assert "no media files" in user_error(capsys, ["data", "pack", str(empty), "--out", str(tmp_path / "a")])
    message = user_error(capsys, ["data", "pack", str(bad), "--out", str(tmp_path / "b"), "--workers", "0"])
    assert "no clip packed" in message and "all 2 media files were skipped" in message and "fake.mp4" in message
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # no empty dataset.json


def test_generate_export_and_codec(tmp_path, capsys, unreadable_checkpoint):
    out = str(tmp_path / "clip.mp4")
    message = user_error(capsys, ["generate", "--checkpoint", "nosuch", "--prompt", "a", "--seconds", "1",
                                  "--out", out])
    assert "'nosuch' is neither a .ckpt file or exported folder nor a reference model" in message
    assert "--seconds must be > 0, got -3" in user_error(capsys, ["generate", "--checkpoint", "nosuch", "--prompt",
                                                                  "a", "--seconds", "-3", "--out", out])
    assert "--seconds must be > 0, got 0" in user_error(capsys, ["generate", "--checkpoint", "nosuch", "--prompt",
                                                                 "a", "--seconds", "0", "--out", out])
    assert "unreadable.ckpt is not a readable checkpoint" in user_error(capsys, [
        "generate", "--checkpoint", str(unreadable_checkpoint), "--prompt", "a", "--seconds", "1", "--out", out])
    assert "not a device" in user_error(capsys, ["generate", "--checkpoint", "nosuch", "--prompt", "a", "--seconds",
                                                 "1", "--out", out, "--device", "gpu7"])
    assert 'Parser key "seconds"' in user_error(capsys, ["generate", "--checkpoint", "x", "--prompt", "a",
                                                         "--seconds", "abc"])
    assert "unreadable.ckpt is not a readable checkpoint" in user_error(capsys, [
        "export", "--checkpoint", str(unreadable_checkpoint), "--out", str(tmp_path / "exported")])
    assert "missing.ckpt: no such file" in user_error(capsys, ["export", "--checkpoint", str(tmp_path / "missing.ckpt"),
                                                              "--out", str(tmp_path / "exported")])
    assert "is not a torch weights file" in user_error(capsys, [
        "codec", "export", "--checkpoint", str(unreadable_checkpoint), "--out", str(tmp_path / "c.safetensors")])
    assert "invalid choice: 'gnerate'" in user_error(capsys, ["gnerate"])


def test_evaluate(tmp_path, capsys):
    assert "neither a media file nor a folder" in user_error(capsys, ["evaluate", "--real", str(tmp_path / "missing"),
                                                                      "--fake", str(tmp_path)])
    assert "--watch generates its own clips" in user_error(capsys, ["evaluate", "--watch", str(tmp_path),
                                                                    "--fake", str(tmp_path)])
    assert "--watch " + str(tmp_path / "missing") + ": no such run folder" in user_error(capsys, [
        "evaluate", "--watch", str(tmp_path / "missing"), "--once", "true"])
    assert "unknown metrics ['fvd']" in user_error(capsys, ["evaluate", "--real", str(tmp_path), "--fake",
                                                            str(tmp_path), "--extractors", "video_stats,fvd"])
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 64)
    assert "no readable clip in" in user_error(capsys, ["evaluate", "--real", str(tmp_path), "--fake", str(tmp_path)])


def test_fit_bad_values_are_one_line(tmp_path, capsys):
    assert 'Parser key "trainer.max_steps"' in user_error(capsys, ["fit", "-c", str(RECIPES / "base.yaml"),
                                                                   "--trainer.max_steps", "abc"])
    assert "File does not exist" in user_error(capsys, ["fit", "-c", str(tmp_path / "nope.yaml")])
    teacher = [item for name in ("base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml",
                                 "model/tiny.yaml") for item in ("-c", str(RECIPES / name))]
    # a misspelt init arg: the reason, not the union's subtypes and the given value
    assert user_error(capsys, ["fit", *teacher, "--model.init_args.network.init_args.depht", "3"]) == (
        "Parser key \"model\": Problem with given class_path 'omniforcing.training.TeacherLitModule': Parser key "
        "\"network\": Problem with given class_path 'omniforcing.models.DualStreamTransformer': Option 'depht' is "
        "not accepted (--help lists the options)")
    assert "--ckpt_path " + str(tmp_path / "gone.ckpt") + ": no such checkpoint file" in user_error(capsys, [
        "fit", *teacher, f"--trainer.logger.init_args.save_dir={tmp_path}", "--ckpt_path", str(tmp_path / "gone.ckpt")])


def test_debug_keeps_the_traceback_and_bugs_are_not_swallowed(tmp_path, monkeypatch):
    with pytest.raises(MissingInputError, match="no shard files match"):
        main(["--debug", "data", "inspect", str(tmp_path / "missing")])
    monkeypatch.setenv("OMNIFORCING_DEBUG", "1")
    with pytest.raises(MissingInputError):
        main(["data", "inspect", str(tmp_path / "missing")])
    monkeypatch.delenv("OMNIFORCING_DEBUG")

    def broken(path: Path) -> None:
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(omniforcing.commands.data, "inspect", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["data", "inspect", str(tmp_path)])


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning: 10-20 s on 2 busy cores
def test_the_installed_entry_point_exits_2_with_one_line(tmp_path):
    command = [sys.executable, "-m", "omniforcing", "data", "inspect", str(tmp_path / "missing")]
    environment = {k: v for k, v in os.environ.items() if k != "OMNIFORCING_DEBUG"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"error: no shard files match '{tmp_path / 'missing'}'"]
