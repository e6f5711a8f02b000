"""On CUDA (captured block steps by default): the scheduler's interleaving of streams on one thread gives each
stream exactly what it would get alone, and the server streams two clients at once."""

from __future__ import annotations

import threading

import pytest
import torch
from live_server_helpers import STUDENT, RunningServer

from omniforcing.data.media import read_av
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.serving.app import LiveServer

pytestmark = pytest.mark.gpu

PROMPTS = [("a green circle bounces; the circle rings low", 1), ("a white triangle bounces; the triangle clinks", 2)]


@pytest.fixture(scope="module")
def cuda_generator() -> StreamingGenerator:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    generator = StreamingGenerator.from_pretrained(STUDENT, device="cuda")
    assert generator.compiled  # the captured path is the one under test
    return generator


def _latents(block) -> torch.Tensor:
    return torch.cat([block.latents.video.flatten(), block.latents.audio.flatten()]).float().cpu()


def test_interleaved_streams_equal_each_stream_alone(cuda_generator):
    alone = [[_latents(b) for b in cuda_generator.stream(p, 4, s)] for p, s in PROMPTS]
    streams = [cuda_generator.stream(p, 4, s) for p, s in PROMPTS]
    interleaved: list[list[torch.Tensor]] = [[], []]
    for _ in range(len(alone[0])):  # round-robin, as BlockScheduler runs them
        for index, stream in enumerate(streams):
            interleaved[index].append(_latents(next(stream)))
    for mine, reference in zip(interleaved, alone):
        for block, (x, y) in enumerate(zip(mine, reference)):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-5, msg=f"block {block} differs when interleaved")


def test_two_clients_stream_at_once_on_cuda(cuda_generator):
    live = RunningServer(LiveServer(cuda_generator, max_streams=2))
    bodies: dict[int, bytes] = {}

    def read(index: int) -> None:
        prompt, seed = PROMPTS[index]
        bodies[index] = live.request("POST", "/streams", {"prompt": prompt, "seed": seed, "seconds": 3})[2]

    try:
        readers = [threading.Thread(target=read, args=(i,)) for i in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(60)
        assert live.metrics()["streams_started"] == 2
    finally:
        live.stop()
    for index in range(2):
        assert read_av(bodies[index]).video.shape == (73, 32, 32, 3)
