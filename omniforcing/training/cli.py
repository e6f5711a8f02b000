"""LightningCLI for ``omniforcing fit|validate|test|predict`` with composable YAML recipes.

Subclass mode for model and data: a recipe picks any LightningModule (a method module, or codec training's
:class:`~omniforcing.training.codec.CodecLitModule`) and datamodule by ``class_path``. The clip geometry is
linked from the datamodule to the module, so it is stated once (``data.init_args.clip``); every module takes
a ``clip`` argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from lightning.pytorch.cli import LightningCLI


class OmniCLI(LightningCLI):
    """LightningCLI with the project's links; configs are saved beside every run (``config.yaml``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.clip", "model.init_args.clip")


def run_lightning_cli(args: Sequence[str] | None) -> OmniCLI:
    """Run a LightningCLI subcommand (``args[0]`` in fit/validate/test/predict; ``None`` reads ``sys.argv``)."""
    return OmniCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
    )
