"""Shared fixtures: deterministic seeds, float32 default, paths to the shared real media."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

SHARED_MEDIA = Path(os.environ.get("OMNIFORCING_SHARED_MEDIA", Path(__file__).resolve().parents[2] / "shared" / "media"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seeded, float32, and one torch thread: the tensors are tiny, and several threads crawl on a shared,
    busy 2-core machine (the CI machine); the previous thread count is restored after each test."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_media() -> Path:
    """The folder of real clips beside the project (``../shared/media``); skips when absent."""
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"real media folder {SHARED_MEDIA} is absent (set OMNIFORCING_SHARED_MEDIA)")
    return SHARED_MEDIA


@contextlib.contextmanager
def _refuse_host_sync():
    names = ("item", "tolist", "__int__", "__bool__", "__float__", "__index__")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} called inside a block step")
        return call

    try:
        for name in names:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@contextlib.contextmanager
def _cuda_sync_errors():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture
def cuda_sync_errors():
    """A context manager under which any CUDA host synchronisation raises (``set_sync_debug_mode("error")``)."""
    return _cuda_sync_errors


@pytest.fixture
def no_host_sync():
    """A context manager that makes every tensor -> Python conversion (``.item()``, ``.tolist()``, ``int()``,
    ``bool()``..., the CPU stand-ins of a host synchronisation) raise ``AssertionError``."""
    return _refuse_host_sync
