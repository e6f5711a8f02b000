"""Methods declare what generation needs (``generation_settings``): every checkpoint carries it and export
records exactly that as ``method_args``, next to the backbone's class path."""

from __future__ import annotations

import json

import torch

from omniforcing.cli import main
from omniforcing.inference.export import CONFIG_NAME, GENERATION_SETTINGS_KEY, export_checkpoint


def test_a_fit_checkpoint_carries_the_declared_settings_and_export_records_them(tmp_path, tiny_teacher_args):
    main(["fit", *tiny_teacher_args, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
          "--model.init_args.sample_steps=3", "--model.init_args.video_cfg=2.5"])
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    declared = torch.load(checkpoint, map_location="cpu", weights_only=True)[GENERATION_SETTINGS_KEY]
    assert declared == {"modality": "joint", "sample_steps": 3, "sample_shift": 1.0, "video_cfg": 2.5,
                        "audio_cfg": 3.0}
    config = json.loads((export_checkpoint(checkpoint, tmp_path / "export") / CONFIG_NAME).read_text())
    assert config["method_args"] == declared
    assert config["network"]["class_path"] == "omniforcing.models.DualStreamTransformer"
