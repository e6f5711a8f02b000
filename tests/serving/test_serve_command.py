"""``omniforcing serve``: one-line errors, the loopback check behind the bind warning, a real start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from omniforcing.commands.serve import is_loopback, serve, warm_up
from omniforcing.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_checkpoint_and_bidirectional_model_exit_with_one_line():
    with pytest.raises(UserError, match=r"^serve: --checkpoint 'no-such-model' is neither"):
        serve(checkpoint="no-such-model")
    if not (ROOT / "checkpoints" / "reference" / "teacher").is_dir():
        pytest.skip("the reference teacher is absent")
    with pytest.raises(UserError, match=r"^serve: streaming needs a causal"):
        serve(checkpoint="teacher", device="cpu")


def test_only_loopback_hosts_count_as_local():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
    assert not is_loopback("192.0.2.7")  # TEST-NET-1: never local
    assert not is_loopback("no-such-host.invalid")


def _default_interrupt() -> None:
    """In the server's process before exec: Ctrl-C's default, whatever the test runner inherited (a background
    job's shell starts it with SIGINT ignored, and Python then keeps it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_the_command_serves_the_page_until_interrupted(stop_signal):
    command = [sys.executable, "-m", "omniforcing", "serve", "--checkpoint", "student", "--port", "0",
               "--threads", "1"]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_default_interrupt)
    try:
        line = server.stdout.readline()  # bounded by the timeout below through communicate on failure
        assert line.startswith("serving student on http://127.0.0.1:"), line
        url = line.split()[3]
        assert "warning" not in line
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"omniforcing live" in page.read()
    finally:
        server.send_signal(stop_signal)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # show what the server printed instead of a bare timeout
            server.kill()
            pytest.fail(f"the server did not stop within 30 s of {stop_signal.name}; it printed:\n"
                        f"{server.communicate()[0]}")
    assert server.returncode == 0 and "stopped" in output and "Traceback" not in output


def test_warm_up_runs_one_window_only_when_block_steps_are_captured(generator, monkeypatch):
    streamed = []
    monkeypatch.setattr(generator, "stream", lambda prompt, seconds: streamed.append(seconds) or iter(range(seconds)))
    assert warm_up(generator) == 0 and streamed == []  # eager on CPU: nothing to compile
    monkeypatch.setattr(type(generator), "compiled", property(lambda self: True))
    assert warm_up(generator) == 11 and streamed == [11]  # 10-s window: blocks until it is full, and one more
