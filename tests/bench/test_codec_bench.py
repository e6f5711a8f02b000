"""The codec benchmark runs, measures every codec and reports a trained checkpoint's reconstruction."""

from __future__ import annotations

from omniforcing.bench.codec import run_codec_bench
from omniforcing.codecs import CausalVideoAutoencoder, save_codec


def test_quick_codec_bench_measures_every_codec(tmp_path):
    checkpoint = save_codec(CausalVideoAutoencoder(widths=(8, 8, 8), group_width=16), tmp_path / "v.safetensors")
    report = run_codec_bench(quick=True, video_checkpoint=str(checkpoint))
    speed, video_quality, audio_quality = report.tables
    assert [row[0] for row in speed.rows] == ["patch video", "learned video", "mel audio", "learned audio"]
    assert all(row[2] > 0 and row[3] > 0 for row in speed.rows)
    patch_row, learned_row = video_quality.rows
    assert patch_row[3] < 1e-5  # exact codec
    assert learned_row[1] < patch_row[1]  # an untrained learned codec is far from exact
    assert 0 < audio_quality.rows[0][1] < 0.5
    assert "# bench suite `codec`" in report.to_markdown()
