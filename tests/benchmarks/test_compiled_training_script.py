"""benchmarks/compiled_training.py prints one row per method with eager and compiled step times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compiled_training.py"


@pytest.mark.slow
def test_the_script_times_a_method_eager_and_compiled():
    done = subprocess.run([sys.executable, str(SCRIPT), "--preset", "tiny", "--methods", "teacher"],
                          capture_output=True, text=True, timeout=900, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| teacher")]
    assert len(rows) == 1
    eager, compiled, ratio, warm_up = (float(cell) for cell in rows[0].strip("|").split("|")[1:])
    assert eager > 0 and compiled > 0 and warm_up > 0
    assert ratio == pytest.approx(compiled / eager, rel=0.01)  # printed to 4 significant digits
