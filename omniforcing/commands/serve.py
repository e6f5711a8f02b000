"""``omniforcing serve``: an HTTP server whose page plays live streams of a causal student (docs/serving.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import signal
import socket
import time

import torch

from omniforcing.commands.generate import Dtype, resolve_checkpoint, resolve_device, resolve_dtype
from omniforcing.errors import UserError
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.serving.app import LiveServer, start_server


def serve(
    *,
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_streams: int = 2,
    window: float | None = None,
    queue_blocks: int = 2,
    stall_seconds: float = 60.0,
    steps: int | None = None,
    device: str = "auto",
    dtype: Dtype = "auto",
    threads: int | None = None,
) -> None:
    """Serve live streams: a page with start, stop and a prompt box plays audio and video as they are generated.

    Args:
        checkpoint: a causal student: Lightning ``.ckpt``, ``omniforcing export`` folder or reference name
            (e.g. ``student``).
        host: address to bind; the default serves this machine only (see docs/serving.md before exposing it).
        port: TCP port (0: any free port).
        max_streams: concurrent streams; one more is answered 503. Each stream gets ``1/max_streams`` of the
            generation throughput (one generation thread, round-robin).
        window: KV-cache window in seconds (default: the model's, else 10).
        queue_blocks: encoded blocks a stream may hold for a slow client before its generator waits.
        stall_seconds: a client that takes nothing for this long is dropped.
        steps: denoising steps of both modalities (default: the model's recorded setting).
        device: ``auto``, ``cpu`` or ``cuda``.
        dtype: backbone dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32`` or ``bfloat16``.
        threads: CPU threads for torch (``None``: torch's default).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    target = resolve_device(device)
    try:
        generator = StreamingGenerator.from_pretrained(resolve_checkpoint(checkpoint), device=target,
                                                       video_steps=steps, window_seconds=window)
        generator.network.to(resolve_dtype(dtype, target))
        server = LiveServer(generator, max_streams, queue_blocks, stall_seconds)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"serve: {error}") from error
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warm_up(generator)
    try:
        asyncio.run(_run(server, host, port, checkpoint))  # returns on SIGTERM
    except KeyboardInterrupt:
        pass
    except OSError as error:  # e.g. the port is taken
        raise UserError(f"serve: cannot listen on {host}:{port}: {error.strerror or error}") from error
    print("stopped")


WARM_UP_MAX_SECONDS = 20
"""Longest warm-up stream (a model that never evicts would otherwise meet a new shape at every block)."""


def warm_up(generator: StreamingGenerator) -> int:
    """Compile the captured block step for every shape a stream meets before the first viewer waits for it.

    With ``settings.compile`` (the default on CUDA) the first forwards of each shape compile, and a stream meets
    a new shape at every block until its window is full, so the first viewer would wait for compilation block
    after block. A throw-away stream of one window (at most :data:`WARM_UP_MAX_SECONDS`) does it at start-up;
    later streams reuse the compiled graphs. Eager generators (CPU) need none. Returns the blocks generated.
    """
    if not generator.compiled:
        return 0
    window = generator.settings.window_seconds
    seconds = min(WARM_UP_MAX_SECONDS, math.ceil(window) + 1 if window is not None else WARM_UP_MAX_SECONDS)
    print(f"warming up the captured block step ({seconds} s stream) ...", flush=True)
    start = time.perf_counter()
    blocks = sum(1 for _ in generator.stream("warm-up", seconds=seconds))
    print(f"warmed up in {time.perf_counter() - start:.1f} s", flush=True)
    return blocks


async def _run(server: LiveServer, host: str, port: int, checkpoint: str) -> None:
    runner, bound = await start_server(server, host, port)
    settings = server.generator.settings
    print(f"serving {checkpoint} on http://{_url_host(host)}:{bound}/ (up to {server.max_streams} streams, window "
          f"{settings.window_seconds} s, {server.generator.device}); Ctrl-C stops", flush=True)
    if not is_loopback(host):
        print(f"warning: bound to {host}, not to this machine only: anyone who can reach it can start streams "
              f"and read /metrics; put it behind a reverse proxy with access control (docs/serving.md)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:  # SIGTERM (docker stop, systemd, kill) stops as cleanly as Ctrl-C does
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    except NotImplementedError:  # pragma: no cover - event loops without signal support (Windows)
        pass
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) resolves only to loopback addresses."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
