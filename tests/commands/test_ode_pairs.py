"""``omniforcing data ode-pairs``: states on the student's grid, safe shard format, resumable runs."""

from __future__ import annotations

import re
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from omniforcing.cli import main
from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.data.ode_pairs import ODEPairStream, decode_pair
from omniforcing.data.pipeline import stream_seed
from omniforcing.data.shards import iter_tar_samples, resolve_shards
from omniforcing.inference.clips import latent_noise
from omniforcing.inference.export import load_model, save_exported
from omniforcing.methods.ode_regression import student_grid, teacher_trajectory
from omniforcing.models.transformer import DualStreamTransformer
from user_errors import user_error

NETWORK = dict(video_channels=384, video_grid=[4, 4], audio_channels=64, video_width=16, audio_width=16, depth=1,
               video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=16)
CODEC = {"class_path": "omniforcing.codecs.AVCodec", "init_args": {
    "video": {"class_path": "omniforcing.codecs.PatchVideoCodec", "init_args": {"size": 16, "patch_size": 4}},
    "audio": {"class_path": "omniforcing.codecs.MelAudioCodec",
              "init_args": {"n_mels": 16, "griffin_lim_iters": 2, "nnls_iters": 2}}}}


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    """An exported tiny bidirectional teacher with non-zero outputs (perturbed weights)."""
    torch.manual_seed(0)
    network = DualStreamTransformer(**NETWORK)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    codec = AVCodec(PatchVideoCodec(size=16, patch_size=4), MelAudioCodec(n_mels=16, griffin_lim_iters=2, nnls_iters=2))
    config = {"network": {"class_path": "omniforcing.models.DualStreamTransformer", "init_args": NETWORK},
              "codec": CODEC, "method_args": {"video_cfg": 2.0, "audio_cfg": 3.0}}
    return save_exported(tmp_path / "teacher", network, codec, config)


def run(teacher: Path, out: Path, *extra: str) -> None:
    main(["data", "ode-pairs", "--teacher", str(teacher), "--out", str(out), "--count", "5", "--seconds", "1",
          "--steps", "6", "--student-times", "[1.0, 0.5, 0.25]", "--shard-size", "2", "--batch-size", "2",
          "--seed", "3", "--device", "cpu", *extra])


def test_pairs_sit_exactly_on_the_student_grid(teacher, tmp_path, capsys):
    out = tmp_path / "pairs"
    run(teacher, out)
    assert "5 ODE pairs in 3 shards" in capsys.readouterr().out
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["complete"] and manifest["video_cfg"] == 2.0 and manifest["audio_cfg"] == 3.0  # recorded cfg
    grid = torch.tensor(manifest["grid"], dtype=torch.float64)
    assert [float(grid[i]) for i in manifest["grid_indices"]] == [1.0, 0.5, 0.25] and len(grid) == 7
    samples = [s for url in resolve_shards(str(out)) for s in iter_tar_samples(url)]
    assert [key for key, _ in samples] == [f"{i:08d}" for i in range(5)]
    network, codec, _ = load_model(teacher)
    key, members = samples[3]
    pair = decode_pair({"__key__": key, **members})
    assert pair.times.tolist() == [1.0, 0.5, 0.25, 0.0]
    assert pair.video_states.shape == (4, 4, 384, 4, 4) and pair.audio_states.shape == (4, 26, 64)
    noise = latent_noise(codec, 1, 1, generator=torch.Generator().manual_seed(stream_seed(3, 3)))
    grid, indices = student_grid(6, 1.0, [1.0, 0.5, 0.25])
    want = teacher_trajectory(network, [pair.caption], noise, grid, indices, 2.0, 3.0)
    torch.testing.assert_close(pair.video_states, want.video[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pair.audio_states, want.audio[0], rtol=1e-4, atol=1e-5)
    assert json.loads(members["json"])["index"] == 3 and "bounces" in pair.caption


def test_members_are_plain_arrays_and_the_stream_batches_them(teacher, tmp_path):
    out = tmp_path / "pairs"
    run(teacher, out, "--dtype", "float16")
    with tarfile.open(out / "shard-000000.tar") as archive:
        names = sorted(m.name for m in archive.getmembers())
        array = np.load(io.BytesIO(archive.extractfile("00000000.video_states.npy").read()), allow_pickle=False)
    assert names == ["00000000.audio_states.npy", "00000000.json", "00000000.video_states.npy",
                     "00000001.audio_states.npy", "00000001.json", "00000001.video_states.npy"]
    assert array.dtype == np.float16
    batches = list(ODEPairStream(resolve_shards(str(out)), batch_size=2, shuffle=False))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert batches[0].video_states.dtype == torch.float32 and batches[0].video_states.shape == (2, 4, 4, 384, 4, 4)


def test_a_rerun_skips_complete_shards_and_finishes_partial_work(teacher, tmp_path, capsys):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run(teacher, reference)
    run(teacher, resumed)
    (resumed / "shard-000001.tar").unlink()  # a shard never finished ...
    (resumed / ".shard-000002.tar.tmp").write_bytes(b"partial")  # ... and one interrupted while writing
    (resumed / "shard-000002.tar").unlink()
    kept = (resumed / "shard-000000.tar").stat().st_mtime_ns
    capsys.readouterr()
    run(teacher, resumed)
    assert "(2 already there)" in capsys.readouterr().out
    assert (resumed / "shard-000000.tar").stat().st_mtime_ns == kept  # complete shard not rewritten
    assert not list(resumed.glob(".*.tmp"))
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    message = user_error(capsys, ["data", "ode-pairs", "--teacher", str(teacher), "--out", str(resumed), "--count",
                                  "5", "--seconds", "1", "--steps", "8", "--student-times", "[1.0, 0.5, 0.25]",
                                  "--shard-size", "2", "--seed", "3", "--device", "cpu"])
    assert re.search("other settings.*steps", message)


def test_a_pass_without_readable_pairs_fails_naming_the_shards_and_the_skips(tmp_path):
    import io
    import tarfile

    from omniforcing.training import ODEPairDataModule

    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:  # one sample whose arrays are not npy files
        for name, data in (("00000000.json", b'{"caption": "x"}'), ("00000000.video_states.npy", b"junk")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    loader = ODEPairDataModule(str(tmp_path), num_workers=0).train_dataloader()
    with pytest.raises(RuntimeError, match=r"no readable ODE pair in 1 shards .*shard-000000.tar.*skipped"):
        list(loader)
