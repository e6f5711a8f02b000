"""Compiled training forwards (omniforcing.callbacks.CompileBackbones, issue 12.3): a method trained with its
backbones compiled takes the same steps as eager for the same seed.

``backend="aot_eager"``: dynamo and AOTAutograd trace the forwards and backwards exactly as with inductor, but run
the traced ATen graphs instead of generated kernels, so the weights must agree to float32 rounding (1e-6; measured
equal) and the test stays seconds long on 2 cores.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from omniforcing.callbacks import CompileBackbones
from omniforcing.cli import main
from omniforcing.methods.mutual_forcing import MutualForcing
from omniforcing.models.transformer import DualStreamTransformer
from omniforcing.training import SelfForcingLitModule, TeacherLitModule
from omniforcing.training.codec import CodecLitModule
from omniforcing.training.mutual_forcing import MutualForcingLitModule

from test_omniforcing_modules import CLIP, NETWORK, captions_only, tiny_codec, trainer
from training_recipes import TINY_TEACHER, recipe_args


def fit(module, tmp_path, batches: int, *callbacks) -> dict[str, torch.Tensor]:
    torch._dynamo.reset()
    counters.clear()  # what assert_traced_with_autograd reads is this run's alone
    torch.manual_seed(0)
    trainer(tmp_path, limit_train_batches=batches, callbacks=list(callbacks)).fit(module, captions_only(batches))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_traced_with_autograd() -> None:
    """The compiled run really ran traced graphs with their backward (not an eager fallback)."""
    assert counters["aot_autograd"]["ok"] >= 1 and counters["stats"]["unique_graphs"] >= 1, dict(counters)
    assert not counters["graph_break"], dict(counters["graph_break"])


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)


def teacher_module() -> TeacherLitModule:
    torch.manual_seed(0)
    return TeacherLitModule(DualStreamTransformer(**NETWORK), tiny_codec(), clip=CLIP,
                            optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


def test_a_compiled_teacher_trains_like_an_eager_one(tmp_path):
    start = teacher_module().state_dict()
    eager = fit(teacher_module(), tmp_path, 2)
    callback = CompileBackbones(backend="aot_eager")
    module = teacher_module()
    compiled = fit(module, tmp_path, 2, callback)
    assert callback.compiled == ["network"] and module.network.compiled
    assert_traced_with_autograd()
    assert_same_weights(compiled, eager)
    assert any(not torch.equal(compiled[k], v) for k, v in start.items())  # the steps did change the weights


def stage3_module(teacher) -> SelfForcingLitModule:
    torch.manual_seed(0)
    student = DualStreamTransformer(**NETWORK, causal=True, num_audio_sinks=2)
    return SelfForcingLitModule(student, tiny_codec(), str(teacher), clip=CLIP,
                                init_from=str(teacher / "network.safetensors"),
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
                                critic_optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
                                critic_steps_per_generator_step=1, times=[1.0, 0.5])


@pytest.mark.slow
def test_compiled_stage3_rollouts_train_like_eager_ones(teacher, tmp_path):
    """Self-Forcing: cached forwards with autograd (the rollout), the frozen teacher and the critic, compiled."""
    eager = fit(stage3_module(teacher), tmp_path, 2)
    callback = CompileBackbones(backend="aot_eager")
    module = stage3_module(teacher)
    compiled = fit(module, tmp_path, 2, callback)
    assert callback.compiled == ["network", "teacher", "critic"]
    assert module.network.compiled and module.teacher.compiled and module.critic.compiled
    assert_traced_with_autograd()
    assert_same_weights(compiled, eager)


def test_only_compiles_the_named_backbones_and_rejects_unknown_names(teacher, tmp_path):
    callback = CompileBackbones(backend="aot_eager", only=["teacher"])
    module = stage3_module(teacher)
    callback.setup(trainer(tmp_path), module, "fit")
    assert callback.compiled == ["teacher"] and module.teacher.compiled and not module.network.compiled
    with pytest.raises(ValueError, match="no backbone named teacher in TeacherLitModule \\(it has network\\)"):
        CompileBackbones(only=["teacher"]).setup(trainer(tmp_path), teacher_module(), "fit")


def test_a_module_without_backbones_is_a_clear_error(tmp_path):
    codec_module = CodecLitModule.__new__(CodecLitModule)  # the error is raised before anything of it is used
    with pytest.raises(TypeError, match="CodecLitModule has no backbones"):
        CompileBackbones().setup(trainer(tmp_path), codec_module, "fit")


def test_mutual_forcing_lists_its_critic_only_when_it_distils_with_dmd():
    network = DualStreamTransformer(**NETWORK, causal=True, step_size_conditioning=True)
    plain = MutualForcingLitModule(network, tiny_codec(), clip=CLIP)
    with_critic = MutualForcingLitModule(network, tiny_codec(), clip=CLIP, objective=MutualForcing(distillation="dmd"))
    assert list(plain.backbones()) == ["network"]
    assert list(with_critic.backbones()) == ["network", "critic"] and with_critic.backbones()["critic"] is not network


def test_the_compile_recipe_runs_a_fit_through_the_cli(tmp_path):
    """`omniforcing fit ... -c recipes/strategy/compile.yaml` trains with the network compiled (the backend
    switched to aot_eager on the command line: the last callback of the list is the recipe's)."""
    torch._dynamo.reset()
    counters.clear()
    main(["fit", *recipe_args([*TINY_TEACHER, "strategy/compile.yaml"]),
          f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.callbacks.init_args.backend=aot_eager", "--trainer.max_steps=2",
          "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"])
    assert_traced_with_autograd()
    assert list(tmp_path.rglob("last.ckpt"))  # the run finished and checkpointed
