"""Lightning callbacks: EMA of the trained network, sample logging, throughput (and evaluation)."""

from omniforcing.callbacks.ema import EMA
from omniforcing.callbacks.samples import SampleLogger
from omniforcing.callbacks.throughput import Throughput

__all__ = ["EMA", "SampleLogger", "Throughput"]
