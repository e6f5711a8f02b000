"""``compile_core``: the same forward (and gradients) through ``torch.compile`` as eager, for whole-clip training
forwards; streaming is covered by tests/sampling/test_capture.py."""

from __future__ import annotations

import torch


def _loss_and_grads(model, x):
    out_v, out_a = model(x.video, x.audio, x.t_video, x.t_audio, x.text, causal=True, window_seconds=2)
    loss = out_v.square().mean() + out_a.square().mean()
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


def test_compiled_whole_clip_forward_and_gradients_equal_eager(make_model, make_inputs):
    """Block-causal windowed training forward with autograd, traced by dynamo (``aot_eager``: no code generation,
    to keep it short on CPU); float32, equal to 1e-5."""
    torch._dynamo.reset()
    model = make_model(num_audio_sinks=2, depth=1)
    x = make_inputs(model, seconds=3)
    want_loss, want_grads = _loss_and_grads(model, x)
    model.compile_core(True, backend="aot_eager")
    try:
        got_loss, got_grads = _loss_and_grads(model, x)
    finally:
        model.compile_core(False)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(got_grads, want_grads, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_compile_core_can_be_switched_off(make_model):
    model = make_model()
    model.compile_core(True, backend="aot_eager")
    assert model.compiled
    model.compile_core(False)
    assert not model.compiled


def test_a_deep_copy_of_a_compiled_model_runs_its_own_weights(make_model, make_inputs):
    import copy

    model = make_model(depth=1)
    x = make_inputs(model, seconds=1)
    model.compile_core(True, backend="eager")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for param in twin.parameters():
            param.mul_(0.5)
        got = twin(x.video, x.audio, x.t_video, x.t_audio, x.text)
        twin.compile_core(False)
        want = twin(x.video, x.audio, x.t_video, x.t_audio, x.text)
    torch.testing.assert_close(got, want)
