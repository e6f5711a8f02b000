"""The EMA advances once per optimiser step of the trained network: DMD (5:1 critic/generator), accumulation,
one-optimiser modules (teacher, Mutual Forcing), and resumed counts."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from omniforcing.callbacks import EMA
from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.models.transformer import DualStreamTransformer
from omniforcing.training import TeacherLitModule
from omniforcing.training.mutual_forcing import MutualForcingLitModule

from test_omniforcing_modules import (  # noqa: F401  (teacher is a fixture)
    CLIP, NETWORK, GeneratorSGD, CriticSGD, captions_only, stage1, teacher, tiny_codec, trainer)


class NetworkSnapshots(L.Callback):
    """The network's weights at the end of the chosen batches."""

    def __init__(self, batches: set[int]) -> None:
        self.batches, self.states = batches, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx in self.batches:
            self.states.append({k: v.detach().clone() for k, v in pl_module.network.state_dict().items()})


def hand_ema(states: list[dict[str, Tensor]], decay: float) -> dict[str, Tensor]:
    """The first state copied, then ``shadow = decay * shadow + (1 - decay) * state`` for each later one."""
    shadow = {k: v.clone() for k, v in states[0].items()}
    for state in states[1:]:
        for key, value in state.items():
            shadow[key] = decay * shadow[key] + (1 - decay) * value if value.is_floating_point() else value
    return shadow


def assert_shadow_equals(ema: EMA, expected: dict[str, Tensor]) -> None:
    assert set(ema.shadow) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(ema.shadow[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_dmd_ema_updates_once_per_generator_step(teacher, tmp_path):
    module = stage1(teacher, ratio=5)
    ema, snapshots = EMA(decay=0.9), NetworkSnapshots({0, 5, 10, 15})  # the generator batches of a 5:1 schedule
    run = trainer(tmp_path, limit_train_batches=20, callbacks=[ema, snapshots])
    run.fit(module, captions_only(20))
    assert (GeneratorSGD.steps, CriticSGD.steps) == (4, 20) and run.global_step == 24
    assert ema.num_updates == 4 and ema.network_steps == 4
    assert_shadow_equals(ema, hand_ema(snapshots.states, 0.9))
    assert not torch.equal(snapshots.states[0]["video.proj_in.weight"], snapshots.states[-1]["video.proj_in.weight"])


def test_dmd_ema_start_step_counts_generator_steps(teacher, tmp_path):
    module = stage1(teacher, ratio=2)
    ema, snapshots = EMA(decay=0.5, start_step=2, update_every=2), NetworkSnapshots({2, 6})  # generator steps 2, 4
    run = trainer(tmp_path, limit_train_batches=8, callbacks=[ema, snapshots])
    run.fit(module, captions_only(8))
    assert GeneratorSGD.steps == 4 and ema.network_steps == 4 and ema.num_updates == 2
    assert_shadow_equals(ema, hand_ema(snapshots.states, 0.5))


def test_teacher_ema_counts_optimiser_steps_under_gradient_accumulation(tmp_path):
    torch.manual_seed(0)
    module = TeacherLitModule(DualStreamTransformer(**NETWORK), tiny_codec(), clip=CLIP,
                              optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    ema, snapshots = EMA(decay=0.8), NetworkSnapshots({1, 3, 5})  # steps after batches 1, 3, 5
    run = trainer(tmp_path, limit_train_batches=6, accumulate_grad_batches=2, callbacks=[ema, snapshots])
    run.fit(module, captions_only(6))
    assert run.global_step == 3 and ema.num_updates == 3 and ema.network_steps == 3
    assert_shadow_equals(ema, hand_ema(snapshots.states, 0.8))


def test_mutual_forcing_ema_updates_every_batch(tmp_path):
    torch.manual_seed(0)
    network = DualStreamTransformer(**NETWORK, causal=True, step_size_conditioning=True)
    module = MutualForcingLitModule(network, tiny_codec(), clip=CLIP, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    ema, snapshots = EMA(decay=0.7), NetworkSnapshots({0, 1, 2})
    run = trainer(tmp_path, limit_train_batches=3, callbacks=[ema, snapshots])
    run.fit(module, captions_only(3))
    assert run.global_step == 3 and ema.num_updates == 3
    assert_shadow_equals(ema, hand_ema(snapshots.states, 0.7))


def test_ema_of_a_module_no_optimiser_updates_warns_and_stays_empty(tmp_path, caplog):
    torch.manual_seed(0)
    module = TeacherLitModule(DualStreamTransformer(**NETWORK), tiny_codec(), clip=CLIP,
                              optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    ema = EMA(decay=0.8, target="codec")  # frozen: in no optimiser
    with caplog.at_level("WARNING", logger="omniforcing.callbacks.ema"):
        trainer(tmp_path, limit_train_batches=2, callbacks=[ema]).fit(module, captions_only(2))
    assert ema.num_updates == 0 and not ema.shadow
    assert sum("no optimiser step has updated pl_module.codec" in r.message for r in caplog.records) == 1


def test_ema_state_round_trips_the_step_count():
    ema = EMA(decay=0.9, start_step=3)
    ema.network_steps, ema.num_updates = 7, 5
    restored = EMA(decay=0.9, start_step=3)
    restored.load_state_dict(ema.state_dict())
    assert (restored.network_steps, restored.num_updates) == (7, 5)
