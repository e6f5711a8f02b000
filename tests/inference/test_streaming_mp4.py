"""A streamed clip written progressively is a valid mp4 at every block boundary and in sync at the end."""

from __future__ import annotations

from streaming_helpers import patch_mel_codec

from omniforcing.data.media import read_av
from omniforcing.data.mp4_writers import StreamingMp4Writer
from omniforcing.inference.stream_settings import StreamingSettings
from omniforcing.inference.streaming import StreamingGenerator


def test_progressive_mp4_is_valid_at_every_block_and_in_sync_at_the_end(make_student, tmp_path):
    codec = patch_mel_codec()
    generator = StreamingGenerator(make_student(codec), codec, StreamingSettings(video_times=(1.0, 0.5)))
    seconds, path = 3, tmp_path / "stream.mp4"
    frames_so_far = []
    with StreamingMp4Writer(path, codec.video.fps, codec.audio.sample_rate) as writer:
        for block in generator.stream("a ball bounces", seconds):
            writer.write(block.video, block.audio)
            if block.index >= 1:  # a fragment is complete once the next block's keyframe is written
                clip = read_av(path)
                assert clip.video.shape[0] == sum(frames_so_far)
                assert clip.audio.shape[1] >= round(clip.video.shape[0] / clip.fps * clip.sample_rate) - 1024
            frames_so_far.append(block.video.shape[0])
    clip = read_av(path)
    assert clip.video.shape[0] == 1 + 24 * seconds == sum(frames_so_far)
    expected = 640 + 16000 * seconds
    assert expected <= clip.audio.shape[1] <= expected + 1023  # the last AAC frame's padding at most
    assert abs(clip.audio_start) < 1e-3 and clip.fps == 24 and clip.sample_rate == 16000
