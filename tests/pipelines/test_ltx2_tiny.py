"""LTX-2 through the recipes (issue 13.5): every method's tiny pipeline on recipes/model/ltx2_tiny.yaml on the CPU,
the real-geometry recipe loading local weights, and the FSDP recipe's wrapping policy."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from omniforcing.cli import main
from omniforcing.inference.export import export_checkpoint, instantiate, model_from_checkpoint
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.models.ltx2 import BytePromptEncoder, LTX2Architecture, LTX2Backbone
from omniforcing.models.parallelize import apply_activation_checkpointing
from omniforcing.models.text import TextContext
from omniforcing.training.cli import run_lightning_cli

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TEACHER = ["base.yaml", "data/synthetic.yaml", "teacher/joint.yaml", "latents/patch.yaml", "model/ltx2_tiny.yaml"]
STAGE3 = ["base.yaml", "data/synthetic.yaml", "omniforcing/stage3_self_forcing.yaml", "latents/patch.yaml",
          "model/ltx2_tiny.yaml"]
MUTUAL_JOINT = ["base.yaml", "data/synthetic.yaml", "mutual_forcing/joint.yaml", "latents/patch.yaml",
                "model/ltx2_tiny.yaml"]


def recipe_args(files: list[str]) -> list[str]:
    return [arg for name in files for arg in ("-c", str(RECIPES / name))]


def printed_config(args: list[str]) -> dict:
    """The config ``omniforcing fit ... --print_config`` composes (parsed, nothing instantiated)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def cpu_run(tmp_path: Path, steps: int = 2) -> list[str]:
    return [f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", f"--trainer.max_steps={steps}",
            "--trainer.accelerator=cpu", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--data.init_args.clip.seconds=1",
            "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", "--data.init_args.train_clips=4"]


def last_checkpoint(tmp_path: Path, run: str) -> Path:
    found = sorted((tmp_path / "runs" / run).glob("version_*/checkpoints/last.ckpt"))
    assert found, f"{run} wrote no last.ckpt"
    return found[-1]


# -------------------------------------------------------------------- recipes
def test_the_tiny_recipe_swaps_in_ltx2_and_keeps_the_methods_settings():
    teacher = printed_config(recipe_args(TEACHER))["model"]["init_args"]["network"]
    student = printed_config(recipe_args(STAGE3))["model"]["init_args"]["network"]
    for network in (teacher, student):
        assert network["class_path"] == "omniforcing.models.ltx2.LTX2Backbone"
        args = network["init_args"]
        assert "sink_rope" not in args and "video_channels" not in args  # DualStreamTransformer-only settings
        # the patch codec's latents: 1536 channels on a 4x4 grid, 256 audio channels
        assert (args["architecture"]["in_channels"], args["architecture"]["audio_in_channels"]) == (1536, 256)
        assert args["video_grid"] == [4, 4]
    assert not teacher["init_args"]["causal"] and teacher["init_args"]["num_audio_sinks"] == 0
    assert student["init_args"]["causal"] and student["init_args"]["num_audio_sinks"] == 16
    assert student["init_args"]["prefix"] == "v1"


def test_the_fsdp_recipe_wraps_each_ltx2_block_and_checkpoints_through_the_backbone():
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy

    config = printed_config(recipe_args([*TEACHER, "strategy/fsdp_ltx2.yaml"]))
    strategy = config["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    assert strategy["init_args"]["activation_checkpointing_policy"] is None  # the backbone's own flag instead
    network = config["model"]["init_args"]["network"]["init_args"]
    assert network["activation_checkpointing"] and network["dtype"] == "float32"  # bf16-mixed over fp32 shards
    assert config["trainer"]["precision"] == "bf16-mixed"
    assert not any(c["class_path"].endswith(".EMA") for c in config["trainer"]["callbacks"])
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FSDPStrategy, "strategy")
    init = {k: v for k, v in strategy["init_args"].items() if v is not None}
    built = parser.instantiate(parser.parse_object({"strategy": init})).strategy
    from diffusers.models.transformers.transformer_ltx2 import LTX2VideoTransformerBlock

    assert built.kwargs["auto_wrap_policy"]._module_classes == {LTX2VideoTransformerBlock}


def test_the_real_recipe_loads_local_weights_and_prompt_features(tmp_path):
    """recipes/model/ltx2.yaml with ``pretrained`` pointing at a folder written by ``save_pretrained``."""
    from diffusers import LTX2VideoTransformer3DModel

    from omniforcing.models.ltx2.prompt_bank import PromptBank, PromptFeatures, save_prompt_bank

    architecture = LTX2Architecture()
    saved = LTX2VideoTransformer3DModel(**architecture.diffusers_config())
    saved.save_pretrained(tmp_path / "LTX-2" / "transformer")
    width = architecture.caption_channels
    save_prompt_bank(tmp_path / "prompts.safetensors", {
        caption: PromptFeatures(torch.randn(3, width), torch.randn(3, width)) for caption in ("", "a dog barks")},
        {"name": "test"})
    network = yaml.safe_load((RECIPES / "model" / "ltx2.yaml").read_text())["model"]["init_args"]["network"]
    network["init_args"]["pretrained"] = str(tmp_path / "LTX-2")
    network["init_args"]["text_encoder"]["init_args"]["path"] = str(tmp_path / "prompts.safetensors")
    backbone = instantiate(network)
    assert isinstance(backbone, LTX2Backbone) and isinstance(backbone.text_encoder, PromptBank)
    assert backbone.dtype == torch.bfloat16 and backbone.video_grid == (16, 24) and backbone.depth == 2
    loaded = backbone.transformer.state_dict()
    assert all(torch.equal(loaded[k], v.to(torch.bfloat16)) for k, v in saved.state_dict().items())
    text = backbone.encode_text(["a dog barks"])
    assert isinstance(text, TextContext) and text.video.tokens.shape == (1, 3, width)


def test_local_ltx2_weights_export_as_a_teacher_that_makes_ode_pairs(tmp_path):
    """docs/ltx2.md step 2: the pretrained transformer, exported once, is what teacher_from and ode-pairs read."""
    from diffusers import LTX2VideoTransformer3DModel

    from omniforcing.codecs.base import AVCodec
    from omniforcing.inference.export import load_model, save_exported
    from omniforcing.models.ltx2.prompt_bank import PromptFeatures, save_prompt_bank

    def tree(name: str, key: str) -> dict:
        return yaml.safe_load((RECIPES / name).read_text())["model"]["init_args"][key]

    architecture = LTX2Architecture(in_channels=1536, audio_in_channels=256)  # the patch codec's channels
    LTX2VideoTransformer3DModel(**architecture.diffusers_config()).save_pretrained(tmp_path / "LTX-2" / "transformer")
    captions = tmp_path / "captions.txt"
    captions.write_text("a dog barks\n")
    save_prompt_bank(tmp_path / "prompts.safetensors", {caption: PromptFeatures(torch.randn(3, 16), torch.randn(3, 16))
                                                       for caption in ("", "a dog barks")}, {"name": "test"})
    network = tree("model/ltx2.yaml", "network")
    network["init_args"] |= {"pretrained": str(tmp_path / "LTX-2"), "video_grid": [4, 4]}
    network["init_args"]["text_encoder"]["init_args"]["path"] = str(tmp_path / "prompts.safetensors")
    codec = tree("latents/patch.yaml", "codec")
    save_exported(tmp_path / "teacher", instantiate(network), instantiate(codec, AVCodec),
                  {"network": network, "codec": codec, "method_args": {"video_cfg": 3.0, "audio_cfg": 5.0}})
    teacher, _, config = load_model(tmp_path / "teacher")
    assert isinstance(teacher, LTX2Backbone) and not teacher.causal and teacher.dtype == torch.bfloat16
    main(["data", "ode-pairs", "--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "pairs"), "--count",
          "1", "--seconds", "1", "--steps", "4", "--captions", str(captions), "--device", "cpu"])
    assert json.loads((tmp_path / "pairs" / "dataset.json").read_text())["complete"]


def test_activation_checkpointing_switches_the_ltx2_backbone_and_keeps_its_gradients():
    torch.manual_seed(0)
    network = LTX2Backbone(text_encoder=BytePromptEncoder(16, text_width=16, depth=1, heads=2), video_grid=(2, 2),
                           architecture=LTX2Architecture(), causal=True)
    video, audio = torch.randn(1, 4, 8, 2, 2), torch.randn(1, 26, 8)
    t_video, t_audio = torch.rand(1, 4), torch.rand(1, 26)

    def gradients() -> dict[str, torch.Tensor]:
        network.zero_grad()
        out_video, out_audio = network(video, audio, t_video, t_audio, network.encode_text(["a dog barks"]))
        (out_video.square().mean() + out_audio.square().mean()).backward()
        return {k: p.grad.clone() for k, p in network.named_parameters() if p.grad is not None}

    plain = gradients()
    apply_activation_checkpointing(network)
    assert network.activation_checkpointing
    recomputed = gradients()
    assert plain.keys() == recomputed.keys()
    for key, grad in plain.items():
        torch.testing.assert_close(recomputed[key], grad, rtol=1e-5, atol=1e-6, msg=key)
    with pytest.raises(ValueError, match="every must be 1"):
        apply_activation_checkpointing(network, every=2)


# -------------------------------------------------------------------- the methods on ltx2_tiny
def test_the_teacher_trains_on_ltx2_tiny_and_its_checkpoint_rebuilds_the_backbone(tmp_path):
    """The fast smoke: flow matching through ``omniforcing fit``; the checkpoint's config rebuilds LTX-2."""
    main(["fit", *recipe_args(TEACHER), *cpu_run(tmp_path), "--trainer.logger.init_args.name=teacher"])
    network, codec, config = model_from_checkpoint(last_checkpoint(tmp_path, "teacher"))
    assert isinstance(network, LTX2Backbone) and not network.causal
    assert config["network"]["class_path"] == "omniforcing.models.ltx2.LTX2Backbone"
    assert (network.video_channels, network.audio_channels) == (codec.video.latent_channels,
                                                                codec.audio.latent_channels)


@pytest.mark.slow
def test_the_omniforcing_chain_runs_on_ltx2_tiny_and_streams(tmp_path):
    """Teacher (flow matching) -> Stage I (DMD) -> ODE pairs -> Stage II (ODE regression) -> Stage III
    (Self-Forcing DMD) -> a stream with the rolling cache, each stage through ``omniforcing fit``."""
    from omniforcing.pipelines.omniforcing import run_pipeline

    summary = run_pipeline(tmp_path, model="ltx2_tiny", teacher_steps=2, stage1_steps=2, pairs=2, ode_steps=4,
                           stage2_steps=2, stage3_steps=2, stream_seconds=2, window=1.0)
    assert set(summary["checkpoints"]) == {"teacher", "stage1", "stage2", "stage3"}
    for stage, (causal, sinks) in {"stage1": (False, 0), "stage2": (True, 16), "stage3": (True, 16)}.items():
        network, _, _ = model_from_checkpoint(summary["checkpoints"][stage])
        assert isinstance(network, LTX2Backbone) and (network.causal, network.num_audio_sinks) == (causal, sinks)
    assert json.loads((tmp_path / "pairs" / "train" / "dataset.json").read_text())["complete"]
    stream = summary["stream"]
    assert stream["blocks"] == 3 and stream["seconds_streamed"] == pytest.approx(49 / 24)
    assert stream["cache_bytes"][-1] == stream["cache_bytes"][-2]  # the 1-s window rolls: memory stays flat


def test_mutual_forcing_trains_jointly_on_ltx2_tiny_and_streams_few_step(tmp_path):
    """The joint Mutual Forcing stage (step-size conditioned, no uni-modal coupling: LTX-2 is already joint),
    exported and streamed in the few-step mode by the streaming engine."""
    main(["fit", *recipe_args(MUTUAL_JOINT), *cpu_run(tmp_path), "--model.init_args.init_video_from=null",
          "--model.init_args.init_audio_from=null", "--trainer.logger.init_args.name=mutual"])
    exported = export_checkpoint(last_checkpoint(tmp_path, "mutual"), tmp_path / "exported")
    generator = StreamingGenerator.from_pretrained(exported)
    assert isinstance(generator.network, LTX2Backbone) and generator.network.step_size_conditioning
    blocks = list(generator.stream("a dog barks", 2, seed=0))
    assert len(blocks) == 3
    assert sum(b.video.shape[0] for b in blocks) == 49 and all(torch.isfinite(b.audio).all() for b in blocks)
