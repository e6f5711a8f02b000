"""The streaming engine: parity with the plain block loop and whole-clip decoding, bounded memory, settings."""

from __future__ import annotations

import threading

import pytest
import torch
from streaming_helpers import patch_linear_codec, patch_mel_codec

from omniforcing.inference.clips import to_uint8_video
from omniforcing.inference.stream_settings import StreamingSettings
from omniforcing.diffusion.samplers import fresh_noise
from omniforcing.inference.streaming import StreamingGenerator, generate_streaming_clips, prefetch
from omniforcing.sampling.blocks import block_noise, block_shape, block_step, commit_block, denoise_block
from omniforcing.sampling.capture import CapturedBlockStep
from omniforcing.sampling.few_step import draw_renoise
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.sampling.schedule import BlockTimes
from omniforcing.types import AVLatents

PROMPT = "a red ball bounces"


@torch.no_grad()
def plain_loop(network, codec, settings: StreamingSettings, seconds: int, seed: int) -> AVLatents:
    """The reference: a plain loop over the sampling primitives with one cache per guidance branch."""
    generator = torch.Generator().manual_seed(seed)
    null_text = null_cache = None
    if settings.guided:
        null_text = network.encode_text([PROMPT], drop=torch.ones(1, dtype=torch.bool))
        null_cache = network.new_cache(1, window_seconds=settings.window_seconds)
    denoiser = GuidedDenoiser(network, network.encode_text([PROMPT]), null_text, settings.video_cfg,
                              settings.audio_cfg, cache=network.new_cache(1, window_seconds=settings.window_seconds),
                              null_cache=null_cache)
    times = BlockTimes.of(settings.video_times, settings.audio_times)
    step_size = None if settings.step_size is None else torch.full((1,), settings.step_size)
    video_latent = (codec.video.latent_channels, *codec.video.latent_size)
    blocks = []
    for block in range(1 + seconds if network.prefix == "v1" else seconds):
        noise = block_noise(block_shape(network, block, video_latent, (codec.audio.latent_channels,)), 1,
                            generator, torch.device("cpu"))
        x0 = denoise_block(denoiser, block, noise, draw_renoise(noise, times, generator), times, step_size=step_size)
        context = noise.map(lambda m: fresh_noise(m, generator)) if settings.context_time > 0 else None
        commit_block(denoiser.branches, block, x0, context_time=settings.context_time, context_noise=context,
                     step_size=step_size)
        blocks.append(x0)
    return AVLatents(torch.cat([b.video for b in blocks], 1), torch.cat([b.audio for b in blocks], 1))


CASES = {
    "v1 sinks": (dict(num_audio_sinks=3), StreamingSettings(window_seconds=2)),
    "v2 cfg": (dict(prefix="v2"), StreamingSettings(window_seconds=2, video_cfg=2.0, audio_cfg=3.0)),
    "step size, asymmetric steps, context noise": (
        dict(step_size_conditioning=True),
        StreamingSettings(video_times=(1.0, 0.6, 0.3), audio_times=(1.0, 0.5), step_size=0.25, context_time=0.1,
                          window_seconds=3)),
    "overlap thread": (dict(num_audio_sinks=2), StreamingSettings(window_seconds=2, overlap=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stream_equals_plain_loop_decoded_whole(case, make_student):
    overrides, settings = CASES[case]
    codec = patch_linear_codec()
    network = make_student(codec, **overrides)
    seconds = 4
    streamed = list(StreamingGenerator(network, codec, settings).stream(PROMPT, seconds, seed=7))
    reference = plain_loop(network, codec, settings, seconds, seed=7)
    assert [b.index for b in streamed] == list(range(len(streamed)))
    latents = AVLatents(torch.cat([b.latents.video for b in streamed], 1),
                        torch.cat([b.latents.audio for b in streamed], 1))
    assert torch.equal(latents.video, reference.video) and torch.equal(latents.audio, reference.audio)
    with torch.no_grad():
        video = to_uint8_video(codec.video.decode(reference.video))[0]
        audio = codec.audio.decode(reference.audio)[0, 0]
    assert torch.equal(torch.cat([b.video for b in streamed]), video)
    torch.testing.assert_close(torch.cat([b.audio for b in streamed]), audio, rtol=0, atol=1e-6)
    assert video.shape[0] == 1 + 24 * seconds and audio.shape[0] == 640 // 16 * (1 + 25 * seconds)


def test_blocks_report_media_time_and_timings(make_student):
    codec = patch_mel_codec()
    generator = StreamingGenerator(make_student(codec), codec, StreamingSettings(video_times=(1.0, 0.5)))
    blocks = list(generator.stream(PROMPT, 2))
    assert [(b.start_seconds, b.seconds) for b in blocks] == [(0.0, 1 / 24), (1 / 24, 1.0), (25 / 24, 1.0)]
    assert [tuple(b.video.shape) for b in blocks] == [(1, 8, 8, 3), (24, 8, 8, 3), (24, 8, 8, 3)]
    assert [b.audio.shape[0] for b in blocks] == [640, 16000, 16000]
    assert all(b.audio.abs().max() <= 1 for b in blocks)
    ready = [b.ready_seconds for b in blocks]
    assert ready == sorted(ready) and all(b.generate_ms > 0 and b.decode_ms > 0 for b in blocks)


def test_two_minute_stream_runs_in_bounded_memory(make_student):
    codec = patch_linear_codec()
    network = make_student(codec, num_audio_sinks=2, depth=1)
    settings = StreamingSettings(video_times=(1.0,), window_seconds=4)
    generator = StreamingGenerator(network, codec, settings)
    sizes, tokens, frames, samples = [], [], 0, 0
    for block in generator.stream(PROMPT, seconds=120):  # 121 blocks: the prefix and 2 minutes
        sizes.append(block.cache_bytes)
        tokens.append(block.cache_tokens)
        frames += block.video.shape[0]
        samples += block.audio.shape[0]
    assert len(sizes) == 121 and frames == 1 + 24 * 120 and samples == 40 * (1 + 25 * 120)
    # block 0 (prefix + sinks) and the last 3 blocks stay: constant from block 3 on (the ring buffers are
    # preallocated, so their bytes may reach that bound earlier)
    assert len(set(sizes[3:])) == 1 and len(set(tokens[3:])) == 1
    assert tokens[3] > tokens[2] > tokens[0] and max(sizes) == sizes[-1]
    assert tokens[-1] == (4 * (1 + 3 * 3), 2 + 1 + 25 * 3)  # 2x2 grid tokens per latent; sinks + lead audio


def test_cache_without_window_grows(make_student):
    codec = patch_linear_codec()
    settings = StreamingSettings(video_times=(1.0,), window_seconds=None, decode=False)
    blocks = list(StreamingGenerator(make_student(codec, depth=1), codec, settings).stream(PROMPT, seconds=5))
    tokens = [b.cache_tokens for b in blocks]
    assert all(b[0] > a[0] and b[1] > a[1] for a, b in zip(tokens, tokens[1:]))


def test_decode_false_yields_latents_only(make_student):
    codec = patch_linear_codec()
    settings = StreamingSettings(video_times=(1.0,), decode=False)
    block = next(iter(StreamingGenerator(make_student(codec), codec, settings).stream(PROMPT, 1)))
    assert block.video is None and block.audio is None and block.latents.video.shape == (1, 1, 384, 2, 2)


def test_uni_modal_student_streams_its_modality(make_student):
    codec = patch_linear_codec()
    settings = StreamingSettings(video_times=(1.0,), modality="video")
    blocks = list(StreamingGenerator(make_student(codec), codec, settings).stream(PROMPT, 1))
    assert blocks[1].audio is None and blocks[1].video.shape[0] == 24


def test_relative_prefix_policy_is_passed_to_the_cache(make_student):
    codec = patch_linear_codec()
    generator = StreamingGenerator(make_student(codec), codec, StreamingSettings(prefix_position="relative"))
    assert generator.new_cache().prefix_position == "relative"
    assert StreamingGenerator(make_student(codec), codec).new_cache().prefix_position == "absolute"


def test_errors_for_models_the_engine_cannot_stream(make_student):
    codec = patch_linear_codec()
    with pytest.raises(ValueError, match="causal"):
        StreamingGenerator(make_student(codec, causal=False), codec)
    with pytest.raises(ValueError, match="step_size"):
        StreamingGenerator(make_student(codec, step_size_conditioning=True), codec)
    with pytest.raises(ValueError, match="no step-size conditioning"):
        StreamingGenerator(make_student(codec), codec, StreamingSettings(step_size=0.25))
    with pytest.raises(ValueError, match="strictly decreasing"):
        StreamingSettings(video_times=(0.5, 1.0))


def test_prompt_switch_applies_from_the_next_block_and_keeps_the_history(make_student):
    codec = patch_linear_codec()
    engine = StreamingGenerator(make_student(codec, num_audio_sinks=2), codec,
                                StreamingSettings(window_seconds=3, video_cfg=2.0, decode=False))
    other = "a blue cube"
    asked: list[int] = []

    def prompt(block: int) -> str:
        asked.append(block)
        return PROMPT if block < 2 else other

    switched = list(engine.latent_blocks(prompt, seconds=3, seed=1))
    old = list(engine.latent_blocks(PROMPT, seconds=3, seed=1))
    new = list(engine.latent_blocks(other, seconds=3, seed=1))
    assert asked == [0, 1, 2, 3]
    for a, b in zip(switched[:2], old[:2]):  # before the switch: the old prompt's stream
        assert torch.equal(a.latents.video, b.latents.video) and torch.equal(a.latents.audio, b.latents.audio)
    for a, b, c in zip(switched[2:], old[2:], new[2:]):  # after: neither the old prompt's nor a fresh stream's
        assert (a.latents.video - b.latents.video).abs().max() > 1e-4
        assert (a.latents.video - c.latents.video).abs().max() > 1e-4  # the history came from the old prompt
        assert a.cache_tokens == b.cache_tokens  # the cache kept (and rolled) its history


def test_block_steps_run_eager_on_cpu_unless_asked(make_student):
    codec = patch_linear_codec()
    network = make_student(codec)
    assert StreamingSettings().compile is None
    engine = StreamingGenerator(network, codec, StreamingSettings(decode=False))
    assert not engine.compiled and engine.block_step() is block_step
    captured = StreamingGenerator(network, codec, StreamingSettings(compile=True))
    assert captured.compiled and isinstance(captured.block_step(), CapturedBlockStep)


def test_prefetch_reraises_producer_errors_and_stops_early():
    def failing():
        yield 1
        raise RuntimeError("boom")

    got = []
    with pytest.raises(RuntimeError, match="boom"):
        for item in prefetch(failing(), 1):
            got.append(item)
    assert got == [1]

    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    stream = prefetch(endless(), 2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.is_set()


def test_generate_streaming_clips_batches_captions_with_consecutive_seeds(make_student):
    codec = patch_linear_codec()
    network = make_student(codec, depth=1)
    config = {"method_args": {"times": [1.0, 0.5], "window_seconds": 2}}
    clips = generate_streaming_clips(network, codec, config, ["a ball", "a cube"], seconds=2, seed=3)
    assert clips.video.shape == (2, 49, 8, 8, 3) and clips.audio.shape == (2, 40 * 51)
    generator = StreamingGenerator(network, codec, StreamingSettings(video_times=(1.0, 0.5), window_seconds=2))
    second = list(generator.stream("a cube", 2, seed=4))
    assert torch.equal(clips.video[1], torch.cat([b.video for b in second]))
