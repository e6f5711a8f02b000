"""Lightning callbacks: compiled backbones, EMA of the trained network, sample logging, throughput, periodic
evaluation with metrics."""

from omniforcing.callbacks.compile import CompileBackbones
from omniforcing.callbacks.ema import EMA
from omniforcing.callbacks.evaluation import PeriodicEvaluation
from omniforcing.callbacks.samples import SampleLogger
from omniforcing.callbacks.throughput import Throughput

__all__ = ["CompileBackbones", "EMA", "PeriodicEvaluation", "SampleLogger", "Throughput"]
