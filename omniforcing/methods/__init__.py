"""Training objectives as plain PyTorch (no Lightning): the math of every method lives here."""

from omniforcing.methods.flow_matching import FlowMatching

__all__ = ["FlowMatching"]
