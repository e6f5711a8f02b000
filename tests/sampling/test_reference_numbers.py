"""The sampling layer gives the numbers the four block loops gave before it existed (issue 12, item 1).

The recorded values below were produced by commit 294d32c (before ``omniforcing/sampling`` existed, when
Self-Forcing, Mutual Forcing, dual-mode generation and streaming each had their own loop) by running these
same scenarios through the old functions (``inference.rollout.denoise_block``/``commit_block`` behind
``StreamingGenerator`` and ``SelfForcing.rollout``, ``inference.dual_mode.stream_blocks``,
``diffusion.samplers.sample_few_step``, ``methods.dmd.backward_simulation`` in place of today's
``sample_few_step(..., exit_step=1)``) with ``python tests/sampling/test_reference_numbers.py``. Each tensor is
summarised by its sum, its absolute sum and its first three values. Equal numbers for a fixed seed mean the
random draws still come in the same order. The KV cache became ring buffers after that commit (fabff68);
these values still hold, so that change kept the numbers too.

Mutual Forcing's history now follows the real clip (issue 14, item 1), which changes its numbers: the cases
``mutual_forcing_*_history_from_noise`` run the old history (``HistoryFromNoise``, the ablation) and still give
the values recorded at 294d32c; ``mutual_forcing_*_low_noise`` (``HistoryFromRealClip`` starting at 0.75, 0.5
or 0.25, the first default after that change) were recorded when that change was made, and
``mutual_forcing_trajectory`` and ``mutual_forcing_dmd`` (today's default, starting at 1 or 0.75) when the
default changed on 2026-12-05, each with this file's ``__main__``.
"""

from __future__ import annotations

import pytest
import torch

from omniforcing.codecs import AVCodec, PatchVideoCodec
from omniforcing.codecs.base import AudioCodec
from omniforcing.inference.stream_settings import StreamingSettings
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.methods.dmd import DistributionMatching
from omniforcing.methods.mutual_forcing import MutualForcing
from omniforcing.methods.self_forcing import SelfForcing
from omniforcing.models.transformer import DualStreamTransformer
from omniforcing.sampling.dual_mode import (DualModes, HistoryFromNoise, HistoryFromRealClip, HistorySource,
                                            stream_blocks)
from omniforcing.sampling.few_step import sample_few_step
from omniforcing.sampling.guidance import GuidedDenoiser
from omniforcing.types import AVLatents

TINY = dict(video_channels=4, video_grid=(2, 2), audio_channels=3, video_width=16, audio_width=16, depth=2,
            video_heads=2, audio_heads=2, text_width=16, text_depth=1, text_heads=2, text_max_length=16)
CAPTIONS = ["a red ball", "two cubes"]


class LinearAudioCodec(AudioCodec):
    """A 4-channel audio codec (only its geometry is used: the streams here are not decoded)."""

    def __init__(self) -> None:
        super().__init__()
        self.sample_rate, self.latent_channels = 1000, 4

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def network(seed: int, **overrides) -> DualStreamTransformer:
    torch.manual_seed(seed)
    model = DualStreamTransformer(**{**TINY, **overrides})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.15)  # zero-init heads/gates would output 0
    return model


def clip(seconds: int = 2, seed: int = 0) -> AVLatents:
    gen = torch.Generator().manual_seed(seed)
    return AVLatents(torch.randn(2, 1 + 3 * seconds, 4, 2, 2, generator=gen),
                     torch.randn(2, 1 + 25 * seconds, 3, generator=gen))


def digest(x: torch.Tensor) -> list[float]:
    x = x.detach().double()
    return [x.sum().item(), x.abs().sum().item(), *x.flatten()[:3].tolist()]


def stage_three() -> dict[str, list[float]]:
    """A Stage III step: Self-Forcing rollout (exit step 2, context noise, checkpointed) + DMD, and its gradient."""
    student = network(0, causal=True, num_audio_sinks=2)
    teacher, critic = network(3), network(5)
    method = SelfForcing(context_time=0.25)
    text = student.encode_text(CAPTIONS)
    generator = torch.Generator().manual_seed(7)
    x = method.rollout(student, text, method.num_blocks(student, 2), 2, video_latent=(4, 2, 2), audio_latent=(3,),
                       generator=generator)
    null = teacher.encode_text(CAPTIONS, drop=torch.ones(2, dtype=torch.bool))
    dmd = DistributionMatching()
    losses = dmd.generator_loss(x, dmd.real_score(teacher, teacher.encode_text(CAPTIONS), null),
                                dmd.fake_score(critic, critic.encode_text(CAPTIONS)), generator)
    losses["loss_dmd"].backward()
    grad = torch.stack([p.grad.abs().sum() for p in student.parameters() if p.grad is not None]).sum()
    return {"video": digest(x.video), "audio": digest(x.audio), "loss_dmd": digest(losses["loss_dmd"]),
            "grad": digest(grad)}


def mutual_forcing(distillation: str, history: HistorySource | None = None) -> dict[str, list[float]]:
    """A Mutual Forcing training loss (trajectory; or DMD with guidance, a critic, context noise, rollout input).

    ``history=None`` is today's default (the history from the real clip); :class:`HistoryFromNoise` is the
    variant every Mutual Forcing run used before issue 14, kept as an ablation with its numbers.
    """
    student = network(0, causal=True, step_size_conditioning=True)
    if distillation == "trajectory":
        objective = MutualForcing(teacher_steps=2, min_history_blocks=1, history=history)
        modes, critic = DualModes(), None
    else:
        objective = MutualForcing(distillation="dmd", distill_input="rollout", min_history_blocks=1, history=history)
        modes = DualModes(video_cfg=2.0, audio_cfg=3.0, context_time=0.2, window_seconds=2)
        critic = network(9, causal=True, step_size_conditioning=True)
    step = objective.loss(student, clip(), CAPTIONS, modes, generator=torch.Generator().manual_seed(1),
                          shared_generator=torch.Generator().manual_seed(2), critic=critic)
    return {name: digest(value) for name, value in sorted(step.losses.items()) if name.startswith("loss")}


def streaming() -> dict[str, list[float]]:
    """A stream's latents: guided, asymmetric steps, context noise, rolling window, step-size conditioning."""
    codec = AVCodec(PatchVideoCodec(size=4, patch_size=2), LinearAudioCodec()).eval()
    student = network(0, causal=True, step_size_conditioning=True, num_audio_sinks=2, video_channels=96,
                      audio_channels=4)
    settings = StreamingSettings(video_times=(1.0, 0.6, 0.3), audio_times=(1.0, 0.5), step_size=0.25,
                                     context_time=0.1, window_seconds=2, video_cfg=2.0, audio_cfg=3.0, decode=False)
    latents = StreamingGenerator(student, codec, settings).generate_latents(CAPTIONS[0], seconds=3, seed=4)
    return {"video": digest(latents.video), "audio": digest(latents.audio)}


def dual_mode(mode: str) -> dict[str, list[float]]:
    """Dual-mode generation of three blocks (the multi-step mode with guidance on its own cache)."""
    student = network(0, causal=True, step_size_conditioning=True)
    modes = DualModes(video_cfg=2.0, audio_cfg=3.0, context_time=0.2, window_seconds=2, multi_steps=3)
    with torch.no_grad():
        blocks = list(stream_blocks(student, CAPTIONS, 3, modes, mode=mode,
                                        generator=torch.Generator().manual_seed(6)))
    return {"video": digest(torch.cat([b.video for b in blocks], 1)),
            "audio": digest(torch.cat([b.audio for b in blocks], 1))}


def whole_clip() -> dict[str, list[float]]:
    """Whole-clip few-step sampling and DMD's backward simulation (exit step 1) of a bidirectional generator."""
    model = network(2)
    denoiser = GuidedDenoiser(model, model.encode_text(CAPTIONS), causal=False)
    noise = clip(seed=3)
    with torch.no_grad():
        sampled = sample_few_step(denoiser, noise, [1.0, 0.75, 0.5, 0.25], torch.Generator().manual_seed(8))
    simulated = sample_few_step(denoiser, noise, [1.0, 0.75, 0.5, 0.25], torch.Generator().manual_seed(8), exit_step=1)
    return {"sampled_video": digest(sampled.video), "sampled_audio": digest(sampled.audio),
            "simulated_video": digest(simulated.video), "simulated_audio": digest(simulated.audio)}


LOW_NOISE = [0.75, 0.5, 0.25]
"""History start times of ``recipes/mutual_forcing/ablations/history_from_clip_low_noise.yaml``."""

SCENARIOS = {
    "stage_three": stage_three,
    "mutual_forcing_trajectory": lambda: mutual_forcing("trajectory"),
    "mutual_forcing_dmd": lambda: mutual_forcing("dmd"),
    "mutual_forcing_trajectory_low_noise": lambda: mutual_forcing("trajectory", HistoryFromRealClip(LOW_NOISE)),
    "mutual_forcing_dmd_low_noise": lambda: mutual_forcing("dmd", HistoryFromRealClip(LOW_NOISE)),
    "mutual_forcing_trajectory_history_from_noise": lambda: mutual_forcing("trajectory", HistoryFromNoise()),
    "mutual_forcing_dmd_history_from_noise": lambda: mutual_forcing("dmd", HistoryFromNoise()),
    "streaming": streaming,
    "dual_mode_few_step": lambda: dual_mode("few_step"),
    "dual_mode_multi_step": lambda: dual_mode("multi_step"),
    "whole_clip": whole_clip,
}

RECORDED: dict[str, dict[str, list[float]]] = {
    "dual_mode_few_step": {
        "audio": [-37.84988463297486, 236.68222350254655, 1.5244518518447876, 0.6469858288764954, -1.005079984664917],
        "video": [
            -188.91816423088312, 202.35336046665907, -0.3976897597312927, -0.5262359380722046, -0.5380058288574219,
        ],
    },
    "dual_mode_multi_step": {
        "audio": [238.92191847413778, 362.5148603245616, 2.639374256134033, 0.9837230443954468, -0.20523741841316223],
        "video": [-108.7444616407156, 239.91807785630226, -0.5460447072982788, 1.7197613716125488, -0.2926253080368042],
    },
    "mutual_forcing_dmd": {
        "loss": [19.002098083496094] * 3,
        "loss_critic": [11.777613639831543] * 3,
        "loss_critic_audio": [5.973302364349365] * 3,
        "loss_critic_video": [5.804311275482178] * 3,
        "loss_distill": [1.5878819227218628] * 3,
        "loss_distill_audio": [1.1042872667312622] * 3,
        "loss_distill_video": [0.4835946559906006] * 3,
        "loss_fm": [5.636603355407715] * 3,
        "loss_fm_audio": [2.8138468265533447] * 3,
        "loss_fm_video": [2.82275652885437] * 3,
    },
    "mutual_forcing_dmd_low_noise": {
        "loss": [13.990911483764648] * 3,
        "loss_critic": [5.9070940017700195] * 3,
        "loss_critic_audio": [3.3444318771362305] * 3,
        "loss_critic_video": [2.562662363052368] * 3,
        "loss_distill": [1.9751670360565186] * 3,
        "loss_distill_audio": [0.5966836810112] * 3,
        "loss_distill_video": [1.3784832954406738] * 3,
        "loss_fm": [6.108650207519531] * 3,
        "loss_fm_audio": [3.344676971435547] * 3,
        "loss_fm_video": [2.7639734745025635] * 3,
    },
    "mutual_forcing_dmd_history_from_noise": {
        "loss": [20.425804138183594] * 3,
        "loss_critic": [10.51747989654541] * 3,
        "loss_critic_audio": [4.6611199378967285] * 3,
        "loss_critic_video": [5.856359958648682] * 3,
        "loss_distill": [0.6989139318466187] * 3,
        "loss_distill_audio": [0.4154757261276245] * 3,
        "loss_distill_video": [0.28343823552131653] * 3,
        "loss_fm": [9.209409713745117] * 3,
        "loss_fm_audio": [4.527939319610596] * 3,
        "loss_fm_video": [4.6814703941345215] * 3,
    },
    "mutual_forcing_trajectory": {
        "loss": [5.8304548263549805] * 3,
        "loss_distill": [0.3326718807220459] * 3,
        "loss_distill_audio": [0.2581678330898285] * 3,
        "loss_distill_video": [0.07450404018163681] * 3,
        "loss_fm": [5.4977827072143555] * 3,
        "loss_fm_audio": [3.3139569759368896] * 3,
        "loss_fm_video": [2.183825731277466] * 3,
    },
    "mutual_forcing_trajectory_low_noise": {
        "loss": [6.195036888122559] * 3,
        "loss_distill": [0.07329746335744858] * 3,
        "loss_distill_audio": [0.040395338088274] * 3,
        "loss_distill_video": [0.032902125269174576] * 3,
        "loss_fm": [6.121739387512207] * 3,
        "loss_fm_audio": [3.2265825271606445] * 3,
        "loss_fm_video": [2.8951570987701416] * 3,
    },
    "mutual_forcing_trajectory_history_from_noise": {
        "loss": [6.931493759155273] * 3,
        "loss_distill": [0.9563133716583252] * 3,
        "loss_distill_audio": [0.6366408467292786] * 3,
        "loss_distill_video": [0.319672554731369] * 3,
        "loss_fm": [5.975180149078369] * 3,
        "loss_fm_audio": [3.4077742099761963] * 3,
        "loss_fm_video": [2.567405939102173] * 3,
    },
    "stage_three": {
        "audio": [-19.43274012207985, 277.10040214657784, -0.0325714573264122, -1.1327497959136963, 0.5689510107040405],
        "grad": [252.82437133789062] * 3,
        "loss_dmd": [1.3012361526489258] * 3,
        "video": [-73.35381459444761, 206.88518197089434, 1.662686824798584, 1.2955024242401123, 1.156550407409668],
    },
    "streaming": {
        "audio": [231.97066886723042, 402.0862876921892, 1.4465922117233276, 0.506675124168396, -2.2203996181488037],
        "video": [-311.4295796342194, 4170.0505306608975, 0.8606374859809875, -0.7747198343276978, -0.8202133178710938],
    },
    "whole_clip": {
        "sampled_audio": [
            169.67028618231416, 218.48040826246142, -0.2660950720310211, -0.26011762022972107, 1.446071982383728,
        ],
        "sampled_video": [
            -59.85768831521273, 165.28971845656633, 0.16941103339195251, 1.8674566745758057, 1.636335849761963,
        ],
        "simulated_audio": [
            240.82173801213503, 273.93935138732195, 0.2999730706214905, 0.7209265232086182, 1.3409620523452759,
        ],
        "simulated_video": [
            1.3863630518317223, 167.37099657207727, -0.18755733966827393, 2.278804302215576, 2.183378219604492,
        ],
    },
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_numbers_as_before_the_sampling_layer(name):
    got = SCENARIOS[name]()
    want = RECORDED[name]
    assert sorted(got) == sorted(want)
    for key, values in want.items():
        assert len(got[key]) == len(values), (name, key)
        # Every entry is a digest, [sum, absolute sum, first values] (a scalar loss's is [x, |x|, x]). The signed
        # sum can cancel to near 0 (1.39 out of an absolute sum of 167 for whole_clip), so its rounding error is
        # measured against the absolute sum: CPUs with other SIMD widths sum in another order and differ by ~1e-6
        # of the magnitudes, while a changed random draw moves every number by O(1).
        scales = [abs(values[1])] + [abs(v) for v in values[1:]]
        for a, b, scale in zip(got[key], values, scales):
            assert abs(a - b) <= 1e-5 * max(scale, 1.0), (name, key, got[key], values)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print({name: make() for name, make in SCENARIOS.items()})
