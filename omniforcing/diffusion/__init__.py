"""Rectified-flow math: noising, parameterisations, time samplers, schedules, guidance and samplers.

Pure functions over tensors; no learnable state and no model imports (STYLE.md §3.2, k-diffusion style).
"""

from omniforcing.diffusion.flow import (
    add_noise,
    eps_from_velocity,
    expand_time,
    velocity_from_x0,
    velocity_target,
    x0_from_velocity,
)
from omniforcing.diffusion.guidance import classifier_free_guidance
from omniforcing.diffusion.samplers import Denoiser, fresh_noise, sample_euler
from omniforcing.diffusion.schedules import euler_schedule, shift_time
from omniforcing.diffusion.time_samplers import LogitNormalTimeSampler, TimeSampler, UniformTimeSampler

__all__ = [
    "Denoiser",
    "LogitNormalTimeSampler",
    "TimeSampler",
    "UniformTimeSampler",
    "add_noise",
    "classifier_free_guidance",
    "eps_from_velocity",
    "euler_schedule",
    "expand_time",
    "fresh_noise",
    "sample_euler",
    "shift_time",
    "velocity_from_x0",
    "velocity_target",
    "x0_from_velocity",
]
