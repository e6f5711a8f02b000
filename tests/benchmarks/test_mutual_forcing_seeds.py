"""benchmarks/mutual_forcing_seeds.sh end to end at a smoke budget (one seed, two steps a stage), so the script
behind docs/mutual_forcing.md's "Results over seeds" cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniforcing.bench.mutual_forcing import SHARED_ROWS, summarize

ROOT = Path(__file__).resolve().parents[2]
SMOKE = {"UNI_STEPS": "2", "JOINT_STEPS": "2", "TEACHER_STEPS": "2", "STAGE_STEPS": "2", "PAIRS": "4",
         "STAGE3_STEPS": "2", "CLIPS": "2"}


def run_script(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "mutual_forcing_seeds.sh"), str(out), "0"], cwd=ROOT,
                          env={**os.environ, **SMOKE, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_the_seed_script_trains_every_variant_measures_them_and_resumes(tmp_path):
    done = run_script(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seed = tmp_path / "seed0"
    for variant in ("history_from_clip", "history_from_noise", "history_from_clip_low_noise"):
        assert (seed / variant / "exported").is_dir() and (seed / f"quality_{variant}.json").is_file()
    report = summarize(runs=tmp_path)
    names = {row[0] for row in report.tables[0].rows}
    assert set(SHARED_ROWS) <= names  # the teacher, the student and the real clips, once each
    assert {"few-step 4", "history from noise: few-step 4", "history from clip, s in {0.75, 0.5, 0.25}: few-step 4"} \
        <= names
    cells = [cell for row in report.tables[1].rows for cell in row[2:]]
    assert cells and all(cell == "-" or cell.endswith("(one seed; no floor)") for cell in cells)  # "-": NaN
    assert sum(cell != "-" for cell in cells) > len(cells) // 2
    stamps = {p: p.stat().st_mtime_ns for p in seed.glob("quality_*.json")}
    again = run_script(tmp_path)  # everything finished: nothing is trained or measured again
    assert again.returncode == 0 and "Trainer.fit" not in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in seed.glob("quality_*.json")} == stamps
