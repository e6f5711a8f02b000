"""The EMA advances once per optimiser step of the trained network: DMD (5:1 critic/generator), accumulation,
one-optimiser modules (teacher, Mutual Forcing), and resumed counts; its warm-up decay ``min(decay, (1+n)/(10+n))``."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from omniforcing.callbacks import EMA
from omniforcing.models.transformer import DualStreamTransformer
from omniforcing.training import TeacherLitModule
from omniforcing.training.mutual_forcing import MutualForcingLitModule

from test_omniforcing_modules import CLIP, NETWORK, CriticSGD, GeneratorSGD, captions_only, stage1, tiny_codec, trainer


class NetworkSnapshots(L.Callback):
    """The network's weights at the end of the chosen batches."""

    def __init__(self, batches: set[int]) -> None:
        self.batches, self.states = batches, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx in self.batches:
            self.states.append({k: v.detach().clone() for k, v in pl_module.network.state_dict().items()})


def hand_ema(states: list[dict[str, Tensor]], decay: float, warmup: bool = True) -> dict[str, Tensor]:
    """The first state copied, then ``shadow = d_n * shadow + (1 - d_n) * state`` for the ``n``-th later one, with
    ``d_n = min(decay, (1 + n) / (10 + n))`` (warm-up) or ``decay``."""
    shadow = {k: v.clone() for k, v in states[0].items()}
    for n, state in enumerate(states[1:], start=1):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        for key, value in state.items():
            shadow[key] = d * shadow[key] + (1 - d) * value if value.is_floating_point() else value
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
    assert not torch.allclose(ema.shadow["video.proj_in.weight"],
                              hand_ema(snapshots.states, 0.9, warmup=False)["video.proj_in.weight"])
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


def scalar_ema(values: list[float], **kwargs) -> EMA:
    """An EMA of a one-weight network driven through the callback hooks, one optimiser step per value."""
    network = nn.Linear(1, 1, bias=False)
    module, trainer = SimpleNamespace(network=network), SimpleNamespace(global_step=0)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    ema = EMA(**kwargs)
    ema.on_train_start(trainer, module)
    for value in values:
        with torch.no_grad():
            network.weight.fill_(value)
        ema.on_before_optimizer_step(trainer, module, optimizer)
        ema.on_train_batch_end(trainer, module)
    return ema


def test_warmup_decay_by_hand():
    ema = EMA(decay=0.9)
    assert [ema.decay_at(n) for n in (0, 1, 2, 79, 80, 500)] == [0.0, 2 / 11, 3 / 12, 80 / 89, 0.9, 0.9]
    assert EMA(decay=0.9, warmup=False).decay_at(1) == 0.9
    # copy 1; then 2/11 * 1 + 9/11 * 2 = 20/11; 3/12 * 20/11 + 9/12 * 3 = 119/44; 4/13 * 119/44 + 9/13 * 4 = 515/143
    assert scalar_ema([1.0, 2.0, 3.0, 4.0], decay=0.9).shadow["weight"].item() == pytest.approx(515 / 143)
    # without warm-up: 1 -> 1.1 -> 1.29 -> 1.561
    assert scalar_ema([1.0, 2.0, 3.0, 4.0], decay=0.9, warmup=False).shadow["weight"].item() == pytest.approx(1.561)


def test_warmup_forgets_the_starting_weights_of_a_short_run():
    # 50 generator steps at 0.99 (the pipelines' demo runs): the starting weight 1 and then 0 at every step
    warm, plain = scalar_ema([1.0] + [0.0] * 49, decay=0.99), scalar_ema([1.0] + [0.0] * 49, decay=0.99, warmup=False)
    assert plain.shadow["weight"].item() == pytest.approx(0.99 ** 49)  # 61 % of the starting weights
    assert warm.shadow["weight"].item() == pytest.approx(3628800 / (51 * 52 * 53 * 54 * 55 * 56 * 57 * 58 * 59))
    assert warm.shadow["weight"].item() < 1e-9
