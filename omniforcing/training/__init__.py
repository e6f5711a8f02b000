"""Thin LightningModules wiring a network, an objective and optimisers (the math lives in ``methods``)."""

from omniforcing.training.base import AVLitModule
from omniforcing.training.codec import CodecLitModule
from omniforcing.training.dmd import DMDLitModule
from omniforcing.training.mutual_forcing import MutualForcingLitModule
from omniforcing.training.ode_regression import ODEPairDataModule, ODERegressionLitModule
from omniforcing.training.self_forcing import SelfForcingLitModule
from omniforcing.training.teacher import TeacherLitModule

__all__ = ["AVLitModule", "MutualForcingLitModule", "TeacherLitModule",
           "DMDLitModule", "ODEPairDataModule", "ODERegressionLitModule", "SelfForcingLitModule",
           "CodecLitModule"]
