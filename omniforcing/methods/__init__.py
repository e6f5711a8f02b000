"""Training objectives as plain PyTorch (no Lightning): the math of every method lives here."""

from omniforcing.methods.dmd import DistributionMatching
from omniforcing.methods.flow_matching import FlowMatching
from omniforcing.methods.mutual_forcing import MutualForcing
from omniforcing.methods.ode_regression import ODERegression
from omniforcing.methods.self_forcing import SelfForcing

__all__ = ["FlowMatching", "MutualForcing", "DistributionMatching", "ODERegression", "SelfForcing"]
