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
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback, _get_module_type, _InstantiatorFn
from lightning.pytorch.loggers import TensorBoardLogger

from omniforcing.errors import InvalidInputError, MissingInputError

log = logging.getLogger(__name__)

CONFIG_TAG = "config"
"""TensorBoard text tag of the resolved config."""


class TensorBoardConfig(SaveConfigCallback):
    """Save ``config.yaml`` in the run folder (Lightning's behaviour) and log the same YAML to TensorBoard.

    ``setup`` is Lightning's with ``skip_unset=False`` where Lightning passes jsonargparse's deprecated
    ``skip_none=False`` (same meaning: keep null values), so runs print no jsonargparse deprecation warning.
    Without ``overwrite`` an existing ``config.yaml`` makes jsonargparse's ``save`` refuse (the project passes
    ``overwrite=True``: every launch has its own ``version_N`` folder).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            log_dir = trainer.log_dir  # a collective (it broadcasts rank zero's folder): every rank calls it
            assert log_dir is not None
            if trainer.is_global_zero:  # the logger makes the folder only when it first logs
                get_filesystem(log_dir).makedirs(log_dir, exist_ok=True)
                self.parser.save(self.config, os.path.join(log_dir, self.config_filename), skip_unset=False,
                                 overwrite=self.overwrite, multifile=self.multifile)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

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


def innermost(error: BaseException) -> BaseException:
    """The first exception of the chain that led to ``error`` (jsonargparse wraps a constructor's ``ValueError``
    in its own, whose message dumps the whole namespace)."""
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    return error


class OmniCLI(LightningCLI):
    """LightningCLI with the project's links, config logging and ``--ckpt_path last`` across run versions.

    Three LightningCLI internals call jsonargparse APIs deprecated since 4.49 (``add_instantiator``,
    ``instantiate_classes``, ``skip_none``); they are overridden here with the replacements (instantiators passed
    to ``instantiate``, ``skip_unset``) so that a run shows the user's own warnings, not these.
    """

    instantiators: list[tuple[Any, type, bool]] | None = None
    """``(instantiator, class type, subclasses)`` for ``parser.instantiate`` (set by :meth:`_add_instantiators`)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.clip", "model.init_args.clip")

    def _add_instantiators(self) -> None:
        """Lightning's model/data instantiators (they record hyperparameters), kept for ``instantiate``."""
        self.instantiators = [
            (_InstantiatorFn(cli=self, key="model"), _get_module_type(self._model_class), self.subclass_mode_model),
            (_InstantiatorFn(cli=self, key="data"), _get_module_type(self._datamodule_class), self.subclass_mode_data),
        ]

    def instantiate_classes(self) -> None:
        """Lightning's ``instantiate_classes`` through ``parser.instantiate`` with the instantiators.

        A ``ValueError`` from a constructor is how the package's classes reject values that do not fit together
        (a codec whose latents do not match the network, ...): it becomes an
        :class:`~omniforcing.errors.InvalidInputError`, reported by the command line as one line.
        """
        try:
            self.config_init = self.parser.instantiate(self.config, instantiators=self.instantiators)
        except ValueError as error:
            raise InvalidInputError(f"the recipe's values do not fit: {innermost(error)}") from error
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def _dump_config(self) -> None:
        """The config as hyperparameters (Lightning's, with ``skip_unset=False`` for ``skip_none=False``)."""
        if hasattr(self, "config_dump"):
            return
        dumped = self.parser.dump(self.config, skip_link_targets=False, skip_unset=False, format="yaml")
        self.config_dump = yaml.safe_load(dumped)
        if "subcommand" in self.config:
            self.config_dump = self.config_dump[self.config.subcommand]

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        restore_batch_counts(config["trainer"])

    def before_fit(self) -> None:
        """Resolve ``--ckpt_path last`` to the newest ``last.ckpt`` of any earlier version of this run.

        Every launch gets a new ``version_N`` folder, where Lightning's own ``"last"`` lookup finds nothing and
        silently starts from scratch; a killed run is resumed by launching the same command again with
        ``--ckpt_path last``. Without any earlier checkpoint Lightning's behaviour stays: a fresh start. A path
        that does not exist is a :class:`~omniforcing.errors.MissingInputError` here, before the model is set up.
        """
        config = self.config_init[self.subcommand]
        logger = self.trainer.logger
        ckpt_path = config.get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc", "registry") and not Path(ckpt_path).is_file():
            raise MissingInputError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        if ckpt_path != "last" or not isinstance(logger, TensorBoardLogger):
            return
        found = newest_last_checkpoint(Path(logger.root_dir))
        if found is not None:
            log.info("--ckpt_path last: resuming from %s", found)
            config["ckpt_path"] = str(found)


def run_lightning_cli(args: Sequence[str] | None, exit_on_error: bool = True) -> OmniCLI:
    """Run a LightningCLI subcommand (``args[0]`` in fit/validate/test/predict; ``None`` reads ``sys.argv``).

    With ``exit_on_error=False`` a rejected flag or recipe value raises ``jsonargparse.ArgumentError`` instead of
    printing the usage and exiting (:func:`omniforcing.cli.main` turns it into one line).
    """
    on_error = {"exit_on_error": exit_on_error}
    return OmniCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        save_config_callback=TensorBoardConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**on_error, **{name: dict(on_error) for name in OmniCLI.subcommands()}},
    )


CONFIG_FLAGS = ("-c", "--config")


def recipe_files(args: Sequence[str]) -> list[str]:
    """The ``-c/--config FILE`` arguments of a LightningCLI command line, in order."""
    files = []
    for index, arg in enumerate(args):
        if arg in CONFIG_FLAGS and index + 1 < len(args):
            files.append(args[index + 1])
        elif arg.startswith("--config="):
            files.append(arg.partition("=")[2])
    return files


def class_tree_keys(tree: Any, prefix: str = "") -> tuple[set[str], set[str]]:
    """``(keys with a class_path, keys with init_args but no class_path)`` of a recipe, as dotted paths
    (``model``, ``model.init_args.network``)."""
    with_class, without_class = set(), set()
    if not isinstance(tree, dict):
        return with_class, without_class
    if prefix and "class_path" in tree:
        with_class.add(prefix)
    elif prefix and "init_args" in tree:
        without_class.add(prefix)
    for key, value in tree.items():
        inner_with, inner_without = class_tree_keys(value, f"{prefix}.{key}" if prefix else str(key))
        with_class |= inner_with
        without_class |= inner_without
    return with_class, without_class


def check_recipe_order(args: Sequence[str]) -> None:
    """Refuse, in one line, a recipe that gives ``init_args`` of a class that only a *later* recipe chooses.

    jsonargparse checks each ``-c`` file against the classes chosen so far, so ``-c recipes/model/tiny.yaml``
    (network sizes, no class) before the method recipe that sets the network's ``class_path`` fails with a long
    namespace dump. Files that cannot be read are left to the parser's own error.

    Raises:
        InvalidInputError: naming the file, the file it must come after, and the key.
    """
    files = recipe_files(args)
    trees = []
    for file in files:
        try:
            trees.append(class_tree_keys(yaml.safe_load(Path(file).read_text())))
        except (OSError, yaml.YAMLError):
            trees.append((set(), set()))
    for index, (_, without_class) in enumerate(trees):
        chosen_before = set().union(*(keys for keys, _ in trees[:index]))
        for key in sorted(without_class - chosen_before):
            later = next((files[j] for j in range(index + 1, len(files)) if key in trees[j][0]), None)
            if later is not None:
                raise InvalidInputError(f"recipe order: {files[index]} must come after {later} ({later} chooses "
                                        f"{key}.class_path, {files[index]} only sets its init_args)")
