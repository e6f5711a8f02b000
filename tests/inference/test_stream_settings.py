"""Streaming settings default from what a trained model recorded."""

from __future__ import annotations

import pytest

from omniforcing.inference.stream_settings import DEFAULT_FEW_STEP_TIMES, settings_from_config


def test_student_times_nested_or_top_level_and_no_guidance():
    nested = {"method_args": {"self_forcing": {"class_path": "x", "init_args": {"times": [1.0, 0.8, 0.4]}},
                              "video_cfg": 5.0, "context_time": 0.05}}
    settings = settings_from_config(nested)
    assert settings.video_times == (1.0, 0.8, 0.4) and settings.context_time == 0.05
    assert (settings.video_cfg, settings.audio_cfg) == (1.0, 1.0)  # distilled students are sampled unguided
    mutual = {"method_args": {"few_step_times": [1.0, 0.75, 0.5, 0.25], "step_size": 0.25, "window_seconds": 6,
                              "modality": "video", "times": None}}
    settings = settings_from_config(mutual)
    assert (settings.step_size, settings.window_seconds, settings.modality) == (0.25, 6, "video")


def test_flow_matching_model_samples_its_euler_grid_with_its_guidance():
    settings = settings_from_config({"method_args": {"sample_steps": 4, "sample_shift": 1.0, "video_cfg": 3.0,
                                                     "audio_cfg": 2.0}})
    assert settings.video_times == (1.0, 0.75, 0.5, 0.25) and (settings.video_cfg, settings.audio_cfg) == (3.0, 2.0)
    assert settings_from_config({"method_args": {"sample_steps": 4}}, video_steps=2).video_times == (1.0, 0.5)


def test_per_modality_steps_subsample_the_trained_times():
    config = {"method_args": {"times": [1.0, 0.9, 0.7, 0.4]}}
    settings = settings_from_config(config, video_steps=4, audio_steps=2)
    assert settings.video_times == (1.0, 0.9, 0.7, 0.4) and settings.audio_times == (1.0, 0.4)
    assert settings.forwards_per_block == 5
    assert settings_from_config(config, audio_steps=4).audio_times is None  # equal schedules are not asymmetric
    assert settings_from_config(config, video_steps=3, video_cfg=2.0).forwards_per_block == 8


def test_overrides_and_defaults():
    settings = settings_from_config({"method_args": {}}, window_seconds=3, prefix_position="relative",
                                    video_cfg=None)
    assert settings.video_times == DEFAULT_FEW_STEP_TIMES and settings.window_seconds == 3
    assert settings.prefix_position == "relative" and settings.video_cfg == 1.0
    with pytest.raises(ValueError, match="window_seconds"):
        settings_from_config({"method_args": {}}, window_seconds=0.5)
