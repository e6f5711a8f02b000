"""Media I/O: common containers, mp4 round trips (quality, exact lengths, audio lag), conversions, errors, progressive
writer."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from media_checks import lag_samples, psnr

from omniforcing.data.media import (
    MediaError,
    NoAudioStreamError,
    frame_indices_at,
    read_av,
    resample_audio,
    resize_center_crop,
    retime_video,
    to_mono,
)
from omniforcing.data.mp4_writers import StreamingMp4Writer, encode_mp4, write_mp4
from omniforcing.data.synthetic import SceneSettings, synthesize_clip
from omniforcing.types import ClipSpec

SPEC = ClipSpec(seconds=2)


def _clicks(num_samples: int, rate: int, times: list[float]) -> np.ndarray:
    audio = np.zeros(num_samples, np.float32)
    n = np.arange(400)
    for t in times:
        start = round(t * rate)
        audio[start : start + 400] += 0.8 * np.sin(2 * np.pi * 700 * n / rate) * np.exp(-n / 80)
    return audio


@pytest.mark.parametrize("index", [0, 1, 2])
def test_round_trip_quality_lengths_and_lag(index):
    clip = synthesize_clip(11, index, SPEC, SceneSettings())
    decoded = read_av(encode_mp4(clip.video, SPEC.fps, clip.audio, SPEC.sample_rate))
    assert decoded.video.shape == clip.video.shape and decoded.video.dtype == torch.uint8
    assert psnr(decoded.video.numpy(), clip.video) >= 30.0
    assert decoded.audio.shape == (1, SPEC.num_samples)  # AAC priming and padding removed
    assert decoded.sample_rate == SPEC.sample_rate and decoded.fps == SPEC.fps
    np.testing.assert_allclose(decoded.frame_times.numpy(), np.arange(SPEC.num_frames) / SPEC.fps, atol=1e-6)
    assert abs(lag_samples(clip.audio, decoded.audio[0].numpy())) <= SPEC.sample_rate // 1000  # within 1 ms


def test_default_quality_holds_on_many_synthetic_clips():
    worst = min(psnr(read_av(encode_mp4(c.video, SPEC.fps), with_audio=False).video.numpy(), c.video)
                for c in (synthesize_clip(12, i, SPEC, SceneSettings(min_objects=3)) for i in range(8)))
    assert worst >= 30.0  # 4:4:4 chroma; 4:2:0 measured ~28 dB on such 3-object clips


def test_write_to_file_and_stereo(tmp_path):
    video = np.random.default_rng(0).integers(0, 255, (13, 16, 24, 3), dtype=np.uint8)
    stereo = np.stack([_clicks(8000, 16000, [0.1]), _clicks(8000, 16000, [0.3])])
    path = write_mp4(tmp_path / "a.mp4", video, 24, stereo, 16000)
    decoded = read_av(path)
    assert decoded.video.shape == (13, 16, 24, 3)
    assert decoded.audio.shape == (2, 8000)
    assert lag_samples(stereo[1], decoded.audio[1].numpy()) == 0


def test_missing_audio_is_a_distinct_error():
    data = encode_mp4(np.zeros((5, 16, 16, 3), np.uint8), 24)
    with pytest.raises(NoAudioStreamError):
        read_av(data)
    assert read_av(data, with_audio=False).audio is None


def test_undecodable_and_truncated_input_raise_media_error():
    data = encode_mp4(np.zeros((25, 16, 16, 3), np.uint8), 24, np.zeros(16000, np.float32))
    for bad in (b"not a video" * 50, data[: len(data) // 2]):
        with pytest.raises(MediaError):
            read_av(bad)


def test_encode_rejects_bad_shapes():
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros((2, 15, 16, 3), np.uint8), 24)
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((2, 16, 16, 3), np.float32), 24)


def test_retime_video_has_no_drift_over_long_files():
    source_fps = 30000 / 1001  # NTSC: accumulating 1 / fps in float would drift over an hour
    times = torch.arange(108_000, dtype=torch.float64) / source_fps
    wanted = 3000.0 + torch.arange(48, dtype=torch.float64) / 24
    index = frame_indices_at(times, wanted)
    brute = torch.stack([(times - t).abs().argmin() for t in wanted])
    assert torch.equal(index, brute)
    video = torch.arange(len(times)).remainder(256).to(torch.uint8)[:, None, None, None].expand(-1, 1, 1, 3)
    retimed = retime_video(video, times, 24, 3000.0, 48)
    assert torch.equal(retimed[:, 0, 0, 0], (brute % 256).to(torch.uint8))


def test_resize_center_crop_keeps_the_centre():
    video = torch.zeros(2, 60, 100, 3, dtype=torch.uint8)
    video[:, :, 45:55] = 255  # a vertical bar in the middle
    video[:, :, :10] = 128  # the left border, cropped away
    out = resize_center_crop(video, 30)
    assert out.shape == (2, 30, 30, 3) and out.dtype == torch.uint8
    assert out[0, :, 15, 0].min() > 200 and out[0, :, 0, 0].max() < 10


@pytest.mark.parametrize(("height", "width"), [(20, 40), (40, 20), (60, 100)])
def test_resize_center_crop_to_frames_that_are_not_square_covers_then_crops_the_centre(height, width):
    video = torch.zeros(1, 60, 100, 3, dtype=torch.uint8)
    video[:, :, 45:55] = 255  # a vertical bar in the middle
    video[:, 25:35, :, 1] = 255  # a horizontal bar in the middle (green)
    out = resize_center_crop(video, (height, width))
    assert out.shape == (1, height, width, 3)
    assert out[0, :, width // 2, 0].min() > 200 and out[0, height // 2, :, 1].min() > 200
    assert out[0, 0, 0].max() < 10 and out[0, -1, -1].max() < 10  # corners stay background: nothing stretched in


def test_mono_and_resampling_keep_the_tone():
    rate, tone = 11024, 440.0
    t = np.arange(rate) / rate
    six = torch.from_numpy(np.tile(np.sin(2 * np.pi * tone * t), (6, 1)).astype(np.float32))
    mono = resample_audio(to_mono(six), rate, 16000)
    assert mono.shape == (1, 16000)
    spectrum = np.abs(np.fft.rfft(mono[0].numpy()))
    assert abs(np.argmax(spectrum) - tone) <= 1  # 1 Hz bins over one second


def test_streaming_writer_is_decodable_while_growing_and_in_sync(tmp_path):
    fps, rate, size, blocks = 24, 16000, 32, 3
    path = tmp_path / "stream.mp4"
    rng = np.random.default_rng(1)
    all_audio = []
    with StreamingMp4Writer(path, fps, rate) as writer:
        for block in range(blocks):
            frames = rng.integers(0, 255, (fps + (block == 0), size, size, 3), dtype=np.uint8)
            audio = _clicks(rate + (rate // 25 if block == 0 else 0), rate, [0.25, 0.6])
            writer.write(frames, audio)
            all_audio.append(audio)
            if block >= 1:  # fragments of all earlier blocks are complete on disk
                partial = read_av(path)
                assert partial.video.shape[0] >= writer.frames_written - fps
                assert partial.audio.shape[-1] >= writer.samples_written - rate - 1024
    decoded = read_av(path)
    written = np.concatenate(all_audio)
    assert decoded.video.shape[0] == blocks * fps + 1
    assert len(written) <= decoded.audio.shape[-1] < len(written) + 1024  # AAC pads the last frame only
    assert abs(lag_samples(written, decoded.audio[0].numpy())) <= rate // 1000


def test_streaming_writer_rejects_size_change(tmp_path):
    with StreamingMp4Writer(tmp_path / "s.mp4", 24, 0) as writer:
        writer.write(np.zeros((3, 16, 16, 3), np.uint8))
        with pytest.raises(ValueError, match="frame size changed"):
            writer.write(np.zeros((3, 32, 32, 3), np.uint8))


def _write_container(path, video_codec: str, audio_codec: str, rate: int, channels: int, fps: int = 25,
                     frames: int = 25) -> None:
    """A 1-s file written with PyAV directly (independent of our writer): a moving bar and a 440 Hz tone."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuvj420p" if video_codec == "mjpeg" else "yuv420p"
        audio = container.add_stream(audio_codec, rate=rate)
        audio.layout = "stereo" if channels == 2 else "mono"
        for index in range(frames):
            image = np.zeros((48, 64, 3), np.uint8)
            image[:, 2 * index : 2 * index + 8] = 255
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode(None))
        t = np.arange(rate) / rate
        tone = np.tile(0.5 * np.sin(2 * np.pi * 440 * t), (channels, 1)).astype(np.float32)
        fmt = audio.codec_context.codec.audio_formats[0].name  # the encoder's native sample format
        frame_size = audio.codec_context.frame_size or 1024
        for start in range(0, rate, frame_size):
            chunk = av.AudioFrame.from_ndarray(tone[:, start : start + frame_size], format="fltp",
                                               layout=audio.layout.name)
            chunk.sample_rate, chunk.pts = rate, start
            for converted in av.AudioResampler(format=fmt, layout=audio.layout.name, rate=rate).resample(chunk):
                container.mux(audio.encode(converted))
        container.mux(audio.encode(None))


@pytest.mark.parametrize(("suffix", "video_codec", "audio_codec", "rate", "channels"), [
    (".webm", "libvpx", "libopus", 48000, 2),
    (".mkv", "libx264", "aac", 44100, 2),
    (".mov", "mpeg4", "pcm_s16le", 22050, 1),
    (".avi", "mjpeg", "pcm_s16le", 11025, 1),
])
def test_common_containers_decode_to_frames_and_the_tone(tmp_path, suffix, video_codec, audio_codec, rate, channels):
    path = tmp_path / f"clip{suffix}"
    _write_container(path, video_codec, audio_codec, rate, channels)
    clip = read_av(path)
    assert clip.video.shape == (25, 48, 64, 3) and clip.fps == pytest.approx(25)
    assert clip.audio.shape[0] == channels and clip.sample_rate == rate
    assert abs(clip.audio.shape[1] - rate) <= 0.03 * rate  # codec framing/priming: within 30 ms of 1 s
    bar = clip.video[:, 24].float().mean(-1) > 128  # the bar moves 2 px per frame
    assert [int(torch.nonzero(row)[0, 0]) for row in bar[::8]] == pytest.approx([0, 16, 32, 48], abs=1)
    mono = resample_audio(to_mono(clip.audio), rate, 16000)[0].numpy()
    spectrum = np.abs(np.fft.rfft(mono[1600:14400]))  # away from the encoder's edges
    assert abs(np.argmax(spectrum) * 16000 / 12800 - 440) <= 2.5
