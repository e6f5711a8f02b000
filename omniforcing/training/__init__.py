"""Thin LightningModules wiring a network, an objective and optimisers (the math lives in ``methods``)."""

from omniforcing.training.base import AVLitModule
from omniforcing.training.teacher import TeacherLitModule

__all__ = ["AVLitModule", "TeacherLitModule"]
