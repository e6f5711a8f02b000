"""The ring-buffer KV cache: in-place overwrite, flat memory, static shapes, no host sync, snapshots, prompt switch."""

from __future__ import annotations

import pytest
import torch

WINDOW = 2


def _block_inputs(model, block: int, gen: torch.Generator, batch: int = 1):
    layout = model.layout(1 + 3 * (block + 1))
    vs, as_ = layout.block_slices(block)
    h, w = model.video_grid
    device = next(model.parameters()).device  # drawn on the CPU generator, then moved: same draws on any device
    video = torch.randn(batch, vs.stop - vs.start, model.video_channels, h, w, generator=gen).to(device)
    audio = torch.randn(batch, as_.stop - as_.start, model.audio_channels, generator=gen).to(device)
    return video, audio, torch.full(video.shape[:2], 0.5, device=device), torch.full(audio.shape[:2], 0.5, device=device)


def _step(model, cache, text, block: int, gen: torch.Generator, steps: int = 2):
    """A sampler's block step: ``steps`` non-committing forwards, then the commit forward."""
    video, audio, t_video, t_audio = _block_inputs(model, block, gen)
    for _ in range(steps):
        model(video, audio, t_video, t_audio, text, cache=cache, block=block)
    return model(video, audio, t_video * 0, t_audio * 0, text, cache=cache, block=block, commit=True)


def _storage(cache):
    """``(data_ptr, shape)`` of every storage tensor of the cache."""
    return [(t.data_ptr(), tuple(t.shape)) for layer in cache.snapshot().layers
            for kv in (layer.video_self, layer.audio_self, layer.audio_to_video, layer.video_to_audio)
            for t in (kv.key, kv.value)]


@pytest.mark.parametrize("prefix_position", ["absolute", "relative"])
@torch.no_grad()
def test_ring_is_overwritten_in_place_with_flat_memory_and_fixed_shapes(make_model, prefix_position):
    model = make_model(num_audio_sinks=2, prefix_position=prefix_position)
    text = model.encode_text(["a ball"])
    cache = model.new_cache(1, window_seconds=WINDOW)
    gen = torch.Generator().manual_seed(0)
    storages, sizes, ends = [], [], []
    for block in range(12):
        _step(model, cache, text, block, gen)
        storages.append(_storage(cache))
        sizes.append(cache.nbytes())
        plan = model.cache_plan(cache, model.layout(1 + 3 * (block + 1)), block + 1, True, True)
        ends.append((plan.video.end, plan.audio.end))
    assert all(s == storages[1] for s in storages[1:])  # same addresses and shapes from block to block
    assert len(set(sizes)) == 1  # memory flat over the stream
    assert len(set(ends[WINDOW - 1:])) == 1 and len(set(ends)) == WINDOW  # attention shapes: W, then one
    assert cache.num_tokens() == (model.video_grid[0] * model.video_grid[1] * (1 + 3 * (WINDOW - 1)),
                                  2 + 1 + 25 * (WINDOW - 1))


@torch.no_grad()
def test_unbounded_cache_grows_by_doubling_and_keeps_every_block(make_model, make_inputs):
    model = make_model(num_audio_sinks=2)
    x = make_inputs(model, seconds=10, batch=1)
    cache = model.new_cache(1)
    for k in range(x.layout.num_blocks):
        model(*x.block(k), x.text, cache=cache, block=k, commit=True)
    assert cache.num_tokens() == (x.layout.num_video * 4, x.layout.num_audio + 2)
    assert torch.equal(cache.video_blocks, x.layout.video_block_index.repeat_interleave(4))


def test_no_host_synchronisation_inside_a_block_step(make_model, no_host_sync):
    model = make_model(num_audio_sinks=2, prefix_position="relative")
    text = model.encode_text(["a ball"])
    cache = model.new_cache(1, window_seconds=WINDOW)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for block in range(WINDOW + 2):
            _step(model, cache, text, block, gen)
        inputs = [_block_inputs(model, block, gen) for block in range(WINDOW + 2, WINDOW + 5)]
        with no_host_sync():  # plan, RoPE tables, denoising forwards and the commit of new blocks
            for block, (video, audio, t_video, t_audio) in enumerate(inputs, start=WINDOW + 2):
                model(video, audio, t_video, t_audio, text, cache=cache, block=block)
                model(video, audio, t_video, t_audio, text, cache=cache, block=block, commit=True)
    assert cache.next_block == WINDOW + 5
    with pytest.raises(AssertionError, match="Tensor.item"), no_host_sync():
        torch.ones(1).item()  # the check itself can fail


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_synchronisation_inside_a_block_step_on_cuda(make_model, cuda_sync_errors):
    model = make_model(num_audio_sinks=2).cuda()
    text = model.encode_text(["a ball"])
    cache = model.new_cache(1, window_seconds=WINDOW)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for block in range(WINDOW + 2):
            _step(model, cache, text, block, gen)
        video, audio, t_video, t_audio = _block_inputs(model, WINDOW + 2, gen)
        with cuda_sync_errors():
            for commit in (False, False, True):
                model(video, audio, t_video, t_audio, text, cache=cache, block=WINDOW + 2, commit=commit)


@torch.no_grad()
def test_snapshots_restore_until_overwritten_and_copies_restore_in_place(make_model):
    model = make_model(num_audio_sinks=2)
    text = model.encode_text(["a ball"])
    cache = model.new_cache(1, window_seconds=WINDOW)
    gen = torch.Generator().manual_seed(0)
    for block in range(3):
        _step(model, cache, text, block, gen)
    cheap, copy = cache.snapshot(), cache.snapshot(copy=True)
    probe = _block_inputs(model, 3, gen)
    want = model(*probe, text, cache=cache, block=3)
    _step(model, cache, text, 3, gen)
    cache.restore(cheap)  # only block 3's slot was written since: still intact
    torch.testing.assert_close(model(*probe, text, cache=cache, block=3), want, rtol=0, atol=0)
    for block in range(3, 6):
        _step(model, cache, text, block, gen)
    with pytest.raises(ValueError, match="overwritten blocks it needs"):
        cache.restore(cheap)
    before = _storage(cache)
    for _ in range(2):  # a copy restores any number of times, into the same storage
        cache.restore(copy)
        assert cache.next_block == 3 and _storage(cache) == before
        torch.testing.assert_close(model(*probe, text, cache=cache, block=3), want, rtol=0, atol=0)


@torch.no_grad()
def test_set_text_switches_the_prompt_and_keeps_the_history(make_model):
    model = make_model(num_audio_sinks=2)
    first, second = model.encode_text(["a ball"]), model.encode_text(["thunder"])
    cache = model.new_cache(1, window_seconds=WINDOW)
    gen = torch.Generator().manual_seed(0)
    for block in range(3):
        _step(model, cache, text=first, block=block, gen=gen)
    probe = _block_inputs(model, 3, gen)
    history = cache.history(0).video_self.valid().key.clone()
    with_first = model(*probe, first, cache=cache, block=3)
    cache.set_text(second)
    with pytest.raises(ValueError, match="another TextContext"):
        model(*probe, first, cache=cache, block=3)
    with_second = model(*probe, second, cache=cache, block=3)
    assert (with_second[0] - with_first[0]).abs().max() > 1e-3  # the new prompt is used
    assert cache.next_block == 3 and torch.equal(cache.history(0).video_self.valid().key, history)
    cache.set_text(first)  # and only the prompt changed: switching back gives the first output again
    torch.testing.assert_close(model(*probe, first, cache=cache, block=3), with_first, rtol=0, atol=0)


def test_ring_storage_is_allocated_outside_the_compilable_core(make_model, monkeypatch):
    """``torch.compile`` cannot trace the allocation (``mark_static_address`` is forbidden inside a compiled
    region, seen on an H200), so the storage must exist before :meth:`DualStreamTransformer.core` runs."""
    from omniforcing.models.ring import RingBuffer

    model = make_model(num_audio_sinks=2)
    inside = {"core": False, "allocations": 0}
    core, allocate = type(model).core, RingBuffer.allocate

    def tracked_core(self, *args):
        inside["core"] = True
        try:
            return core(self, *args)
        finally:
            inside["core"] = False

    def tracked_allocate(self, *args):
        assert not inside["core"], "ring storage allocated inside core"
        inside["allocations"] += 1
        return allocate(self, *args)

    monkeypatch.setattr(type(model), "core", tracked_core)
    monkeypatch.setattr(RingBuffer, "allocate", tracked_allocate)
    text, cache, gen = model.encode_text(["a ball"]), model.new_cache(1, window_seconds=WINDOW), torch.Generator()
    with torch.inference_mode():
        for block in range(WINDOW + 2):
            _step(model, cache, text, block, gen.manual_seed(block))
    assert inside["allocations"] > 0
