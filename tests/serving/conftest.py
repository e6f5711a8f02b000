"""Fixtures of the serving tests: the model and running servers (helpers in ``live_server_helpers``).

The model is the shipped reference student (32x32 video, 16 kHz audio): it streams 3 s in about 0.6 s on
one CPU thread, and its sizes are ones browsers and the AAC encoder accept (the tiny test students of
tests/inference use a 1 kHz audio codec that AAC cannot carry).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from live_server_helpers import STUDENT, RunningServer

from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.serving.app import LiveServer


@pytest.fixture(scope="module")
def generator() -> StreamingGenerator:
    if not STUDENT.is_dir():
        pytest.skip(f"the reference student is absent ({STUDENT})")
    return StreamingGenerator.from_pretrained(STUDENT)


@pytest.fixture
def serve(generator: StreamingGenerator) -> Iterator[Callable[..., RunningServer]]:
    """``serve(max_streams=..., queue_blocks=..., stall_seconds=...)`` -> a running server (stopped after)."""
    running: list[RunningServer] = []

    def start(**options: Any) -> RunningServer:
        running.append(RunningServer(LiveServer(generator, **options)))
        return running[-1]

    yield start
    for server in running:
        server.stop()
