"""LightningCLI for ``omniforcing fit|validate|test|predict`` with composable YAML recipes.

Subclass mode for model and data: a recipe picks any LightningModule (a method module, or codec training's
:class:`~omniforcing.training.codec.CodecLitModule`) and datamodule by ``class_path``. The clip geometry is
linked from the datamodule to the module, so it is stated once (``data.init_args.clip``); every module takes
a ``clip`` argument. The resolved config is saved beside every run (``config.yaml``) and shown in
TensorBoard's text tab; ``fit --ckpt_path last`` resumes from the newest ``last.ckpt`` of the run's earlier
versions.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)

CONFIG_TAG = "config"
"""TensorBoard text tag of the resolved config."""


class TensorBoardConfig(SaveConfigCallback):
    """Save ``config.yaml`` in the run folder (Lightning's behaviour) and log the same YAML to TensorBoard."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_unset=False)  # keep null values: the config as run
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # TensorBoard renders text as markdown: a 4-space indent keeps the YAML verbatim.
                logger.experiment.add_text(CONFIG_TAG, textwrap.indent(text, "    "), trainer.global_step)


def newest_last_checkpoint(run_root: Path) -> Path | None:
    """The most recently written ``last*.ckpt`` under ``run_root/version_*/checkpoints/``, if any."""
    found = list(run_root.glob("version_*/checkpoints/last*.ckpt"))
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


BATCH_COUNT_ARGS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                    "val_check_interval")
"""Trainer arguments typed ``int | float`` where an int counts batches and a float is a fraction of an epoch."""


def restore_batch_counts(trainer_config) -> None:
    """Turn ``2.0`` back into ``2`` for the batch-count arguments (in place).

    With Lightning imported, jsonargparse resolves ``int | float`` values to float (Lightning issue #21259), so
    a recipe's ``limit_val_batches: 2`` would reach the Trainer as 2.0 — "twice the epoch" — and never limit
    anything. A whole number above 1 can only mean a count; ``1`` stays ambiguous and keeps Lightning's
    meaning of ``1.0`` (the whole epoch).
    """
    for name in BATCH_COUNT_ARGS:
        value = trainer_config.get(name)
        if isinstance(value, float) and value > 1 and value.is_integer():
            trainer_config[name] = int(value)


class OmniCLI(LightningCLI):
    """LightningCLI with the project's links, config logging and ``--ckpt_path last`` across run versions."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.clip", "model.init_args.clip")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        restore_batch_counts(config["trainer"])

    def before_fit(self) -> None:
        """Resolve ``--ckpt_path last`` to the newest ``last.ckpt`` of any earlier version of this run.

        Every launch gets a new ``version_N`` folder, where Lightning's own ``"last"`` lookup finds nothing and
        silently starts from scratch; a killed run is resumed by launching the same command again with
        ``--ckpt_path last``. Without any earlier checkpoint Lightning's behaviour stays: a fresh start.
        """
        config = self.config_init[self.subcommand]
        logger = self.trainer.logger
        if config.get("ckpt_path") != "last" or not isinstance(logger, TensorBoardLogger):
            return
        found = newest_last_checkpoint(Path(logger.root_dir))
        if found is not None:
            log.info("--ckpt_path last: resuming from %s", found)
            config["ckpt_path"] = str(found)


def run_lightning_cli(args: Sequence[str] | None) -> OmniCLI:
    """Run a LightningCLI subcommand (``args[0]`` in fit/validate/test/predict; ``None`` reads ``sys.argv``)."""
    return OmniCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        save_config_callback=TensorBoardConfig,
        save_config_kwargs={"overwrite": True},
    )
