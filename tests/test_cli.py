"""The command-line entry point: flag spelling and how LightningCLI subcommands see their arguments."""

from __future__ import annotations

import sys

import omniforcing.training.cli
from omniforcing.cli import _underscore_flags, main


def test_contract_flags_map_onto_parameter_names():
    assert _underscore_flags(["--shard-size", "2", "--sample-rate=16000", "--in", "x", "pos"]) == [
        "--shard_size", "2", "--sample_rate=16000", "--source", "x", "pos"]


def test_lightning_subcommands_called_from_python_see_only_their_own_arguments(monkeypatch):
    seen = []
    monkeypatch.setattr(omniforcing.training.cli, "run_lightning_cli", 
                        lambda args, exit_on_error: seen.append((args, sys.argv[:])))
    monkeypatch.setattr(sys, "argv", ["pipeline", "--out", "runs/x"])  # a caller's own flags
    main(["fit", "-c", "recipes/base.yaml"])
    assert seen == [(None, ["pipeline", "fit", "-c", "recipes/base.yaml"])]  # LightningCLI reads sys.argv itself
    assert sys.argv == ["pipeline", "--out", "runs/x"]  # restored
