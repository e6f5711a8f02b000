"""Gradient norms per parameter group: every parameter of the backbone has a group, cross-modal attention is ``cross``."""

from __future__ import annotations

import math

import torch

from omniforcing.models.transformer import DualStreamTransformer
from omniforcing.training import TeacherLitModule

from test_omniforcing_modules import CLIP, NETWORK, captions_only, tiny_codec, trainer


def test_parameter_groups_of_the_backbone():
    network = DualStreamTransformer(**NETWORK, causal=True, num_audio_sinks=2)
    groups = {name: network.parameter_group(name) for name, _ in network.named_parameters()}
    assert groups["layers.0.video.cross_attn.to_q.weight"] == groups["layers.0.audio.cross_attn.to_k.weight"] == "cross"
    assert groups["audio.sinks"] == "sinks"
    assert groups["layers.0.video.text_attn.to_q.weight"] == groups["audio.text.proj.weight"] == "text"
    assert groups["layers.0.video.self_attn.to_q.weight"] == groups["video.proj_in.weight"] == "video"
    assert groups["layers.0.audio.mlp.net.0.weight"] == "audio"
    assert set(groups.values()) == {"cross", "sinks", "text", "video", "audio"}  # nothing falls to "shared"
    # wrapper prefixes (FSDP, checkpointing, torch.compile) keep the group
    assert network.parameter_group("_orig_mod.layers.0._checkpoint_wrapped_module.video.cross_attn.to_q.weight") \
        == "cross"


def test_cross_modal_gradient_norm_is_logged(tmp_path):
    torch.manual_seed(0)
    network = DualStreamTransformer(**NETWORK)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # open the zero-initialised cross-modal gates
    module = TeacherLitModule(network, tiny_codec(), clip=CLIP, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    run = trainer(tmp_path, limit_train_batches=1)
    run.fit(module, captions_only(1))
    logged = {k: float(v) for k, v in run.callback_metrics.items() if k.startswith("train/grad_norm")}
    assert logged["train/grad_norm/cross"] > 0
    parts = [v for k, v in logged.items() if k != "train/grad_norm"]
    assert math.isclose(logged["train/grad_norm"], math.sqrt(sum(v * v for v in parts)), rel_tol=1e-5)
