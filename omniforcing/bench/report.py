"""Benchmark tables: printed as markdown, saved as JSON; measured values only."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Table:
    """One benchmark table.

    Args:
        title: what was measured.
        columns: column headers.
        rows: one list of cell values per row (numbers are formatted with ``fmt``).
        notes: free text printed under the table (settings, caveats).
    """

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: str = ""

    def add(self, *cells: Any) -> None:
        """Append a row; the number of cells must match the columns."""
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table '{self.title}' has {len(self.columns)} columns")
        self.rows.append(list(cells))

    def to_markdown(self) -> str:
        """Render as a GitHub markdown table with the title as a heading."""
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags of bf16 matrix/vector units; without them PyTorch emulates bf16 matmuls (far slower than fp32)."""


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, torch threads, bf16 units, load, GPU."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    for line in cpuinfo:
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["cpu_bf16_units"] = ",".join(f for f in BF16_CPU_FLAGS if f in flags) or "none"
            break
    if hasattr(os, "getloadavg"):  # other processes on the machine at the start of the run (shared CPUs)
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


@dataclass
class Report:
    """Tables of one ``omniforcing bench`` run plus the headline numbers as JSON fields."""

    suite: str
    tables: list[Table] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_description)

    def to_markdown(self) -> str:
        """All tables, with the machine line first."""
        head = f"## bench suite `{self.suite}`\n\nmachine: " + ", ".join(f"{k}={v}" for k, v in self.machine.items())
        return head + "\n\n" + "\n".join(t.to_markdown() for t in self.tables)

    def save_json(self, path: str | Path) -> None:
        """Write the report (tables, summary, machine) as JSON."""
        payload = {"suite": self.suite, "summary": self.summary, "machine": self.machine,
                   "tables": [asdict(t) for t in self.tables]}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=float))
