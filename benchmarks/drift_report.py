"""Drift of long streams: the table and curves of docs/results.md from `omniforcing evaluate --per-window` JSONs.

    python benchmarks/drift_report.py runs/drift/absolute-seen.json runs/drift/absolute-unseen.json \
        runs/drift/relative-seen.json runs/drift/relative-unseen.json --png docs/media/drift.png

Each JSON is one configuration (position policy x prompt kind); its windows are averaged over spans of the
stream (the first 10 s, i.e. inside the trained window and its first fill, then 10-30, 30-60 and 60-120 s), and
the per-window values are drawn as curves (a 5-window moving average, PIL only: no plotting dependency).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from PIL import Image, ImageDraw

SPANS = ((0, 10), (10, 30), (30, 60), (60, 120))
METRICS = (("fd_video_stats", "video stats FD (lower is better)"),
           ("fd_audio_stats", "audio stats FD (lower is better)"),
           ("event_f1_audio_visual", "event F1 audio-visual (higher is better)"),
           ("av_align", "AV-Align (higher is better)"))
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def load(path: Path) -> tuple[str, list[dict]]:
    return path.stem, json.loads(path.read_text())["windows"]


def span_values(windows: list[dict], metric: str, span: tuple[int, int]) -> list[float]:
    return [w["metrics"][metric] for w in windows if span[0] <= w["start_s"] < span[1] and metric in w["metrics"]]


def table(runs: list[tuple[str, list[dict]]]) -> str:
    header = "| configuration | metric (mean ± sd over the span's 2-s windows) | " + " | ".join(f"{a}-{b} s" for a, b in SPANS) + " | last / first |"
    lines = [header, "|" + "---|" * (len(SPANS) + 3)]
    for name, windows in runs:
        for metric, _ in METRICS:
            values = [span_values(windows, metric, span) for span in SPANS]
            means = [statistics.fmean(v) for v in values]
            cells = [f"{m:.3g} ± {statistics.stdev(v):.2g}" for m, v in zip(means, values)]
            ratio = means[-1] / means[0] if means[0] else float("nan")
            lines.append(f"| {name} | {metric} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join(lines)


def smooth(values: list[float], width: int = 5) -> list[float]:
    half = width // 2
    return [statistics.fmean(values[max(0, i - half): i + half + 1]) for i in range(len(values))]


def curves(runs: list[tuple[str, list[dict]]], path: Path) -> None:
    """One panel per metric, one line per configuration, x = stream time (s)."""
    panel_w, panel_h, margin = 520, 220, 40
    image = Image.new("RGB", (2 * panel_w, 2 * panel_h + 30), "white")
    draw = ImageDraw.Draw(image)
    for index, (metric, title) in enumerate(METRICS):
        x0, y0 = (index % 2) * panel_w, (index // 2) * panel_h + 30
        series = [(name, [w["start_s"] for w in windows], smooth([w["metrics"].get(metric, float("nan"))
                                                                  for w in windows])) for name, windows in runs]
        values = [v for _, _, ys in series for v in ys if v == v]
        low, high = min(values), max(values)
        span = high - low or 1.0
        left, right, top, bottom = x0 + margin, x0 + panel_w - 10, y0 + 20, y0 + panel_h - 25
        draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
        draw.text((left, y0 + 4), title, fill="black")
        draw.text((left - 35, top), f"{high:.3g}", fill="black")
        draw.text((left - 35, bottom - 10), f"{low:.3g}", fill="black")
        draw.text((left, bottom + 5), "0 s", fill="black")
        draw.text((right - 30, bottom + 5), "120 s", fill="black")
        for (name, xs, ys), colour in zip(series, COLOURS):
            points = [(left + (right - left) * x / 120, bottom - (bottom - top) * (y - low) / span)
                      for x, y in zip(xs, ys) if y == y]
            draw.line(points, fill=colour, width=2)
    for index, ((name, _), colour) in enumerate(zip(runs, COLOURS)):
        draw.text((10 + 250 * index, 8), name, fill=colour)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsons", nargs="+", type=Path)
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    runs = [load(path) for path in args.jsons]
    print(table(runs))
    curves(runs, args.png)


if __name__ == "__main__":
    main()
