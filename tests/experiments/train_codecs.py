"""Train the learned codecs on in-memory synthetic clips (CPU experiment script).

Clips come from the project's synthetic generator (``omniforcing.data.synthetic.synthesize_clip``: 1-3
bouncing objects on the default dark background, impact sounds and room tone), rendered in memory.

Usage (from the repository root)::

    .venv/bin/python tests/experiments/train_codecs.py video --out runs/codecs/video_ae --steps 4000
    .venv/bin/python tests/experiments/train_codecs.py audio --out runs/codecs/audio_ae --steps 10000
    .venv/bin/python tests/experiments/train_codecs.py mel --out runs/codecs/mel

Each run appends evaluation records (step, elapsed seconds, metrics) to ``OUT/log.jsonl`` and writes the
codec with :func:`omniforcing.codecs.save_codec` to ``OUT/codec.safetensors`` (+ ``codec.json``) at the end
and at every evaluation, after fitting the latent normalisation statistics on held-out clips.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from codec_training import evaluate_audio, evaluate_video  # noqa: E402

from omniforcing.codecs import CausalVideoAutoencoder, MelAudioCodec, MelAutoencoder, save_codec  # noqa: E402
from omniforcing.codecs.objectives import audio_autoencoder_loss, video_autoencoder_loss  # noqa: E402
from omniforcing.data.synthetic import SceneSettings, synthesize_clip  # noqa: E402
from omniforcing.types import ClipSpec  # noqa: E402


def synthetic_clips(seed: int, indices: range, seconds: int = 2,
                    settings: SceneSettings | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Video ``(N, T, 3, 32, 32)`` in ``[-1, 1]`` and audio ``(N, 1, S)`` of synthetic clips ``indices``."""
    spec = ClipSpec(seconds=seconds)
    clips = [synthesize_clip(seed, i, spec, settings) for i in indices]
    video = torch.stack([torch.from_numpy(c.video) for c in clips]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    audio = torch.stack([torch.from_numpy(c.audio) for c in clips])[:, None]
    return video, audio


class ClipPool:
    """A pool of 2-s clips, one eighth re-synthesised every ``refresh_every`` draws; yields random windows."""

    def __init__(self, clips: int, seed: int, refresh_every: int = 50) -> None:
        self.seed, self.next_index = seed, clips
        self.video, self.audio = synthetic_clips(seed, range(clips))
        self.generator = torch.Generator().manual_seed(seed)
        self.refresh_every, self.draws = refresh_every, 0

    def _refresh(self) -> None:
        n = max(1, self.video.shape[0] // 8)
        fresh_video, fresh_audio = synthetic_clips(self.seed, range(self.next_index, self.next_index + n))
        self.next_index += n
        idx = torch.randperm(self.video.shape[0], generator=self.generator)[:n]
        self.video[idx], self.audio[idx] = fresh_video, fresh_audio

    def video_windows(self, batch: int, frames: int) -> torch.Tensor:
        """``(batch, frames, 3, H, W)``: random clips, random start frames."""
        self._tick()
        idx = torch.randint(0, self.video.shape[0], (batch,), generator=self.generator)
        start = torch.randint(0, self.video.shape[1] - frames + 1, (batch,), generator=self.generator)
        return torch.stack([self.video[i, s:s + frames] for i, s in zip(idx.tolist(), start.tolist())])

    def audio_windows(self, batch: int, samples: int, hop: int = 640) -> torch.Tensor:
        """``(batch, 1, samples)``: random clips, random starts on the 40 ms latent grid."""
        self._tick()
        idx = torch.randint(0, self.audio.shape[0], (batch,), generator=self.generator)
        start = hop * torch.randint(0, (self.audio.shape[2] - samples) // hop + 1, (batch,), generator=self.generator)
        return torch.stack([self.audio[i, :, s:s + samples] for i, s in zip(idx.tolist(), start.tolist())])

    def _tick(self) -> None:
        self.draws += 1
        if self.draws % self.refresh_every == 0:
            self._refresh()


def _lr_at(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item()))


def _log(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)  # survives someone clearing runs/ mid-training
    with (out / "log.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def video(out: str = "runs/codecs/video_ae", steps: int = 4000, batch: int = 8, lr: float = 1e-3,
          eval_every: int = 250, seed: int = 0, threads: int = 1, latent_channels: int = 16,
          widths: tuple[int, ...] = (16, 32, 64), group_width: int = 192, blocks_per_level: int = 1,
          context_latents: int = 0, kl_weight: float = 1e-4, gradient_weight: float = 0.5, temporal_weight: float = 0.5,
          motion_boost: float = 4.0, pool_clips: int = 384) -> None:
    """Train :class:`CausalVideoAutoencoder` on 1-s windows (25 frames) of synthetic clips."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    codec = CausalVideoAutoencoder(latent_channels=latent_channels, widths=tuple(widths), group_width=group_width,
                                   blocks_per_level=blocks_per_level, context_latents=context_latents)
    held_out = synthetic_clips(10_000 + seed, range(64))[0]
    one_object = synthetic_clips(20_000, range(32), settings=SceneSettings(max_objects=1))[0]
    pool = ClipPool(pool_clips, seed)
    optimizer = torch.optim.AdamW(codec.parameters(), lr=lr, weight_decay=0.0)
    params = sum(p.numel() for p in codec.parameters())
    _log(out_dir, {"event": "start", "params": params, "config": codec.init_args})
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        loss = video_autoencoder_loss(codec, pool.video_windows(batch, 25), gradient_weight=gradient_weight,
                                      temporal_weight=temporal_weight, motion_boost=motion_boost,
                                      kl_weight=kl_weight)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            record = {"step": step + 1, "seconds": round(time.time() - start, 1), "loss": loss.item()}
            record.update(evaluate_video(codec, held_out))
            record.update({f"one_object_{k}": v for k, v in evaluate_video(codec, one_object).items()})
            _log(out_dir, record)
            codec.fit_normalization(held_out.split(16))
            save_codec(codec, out_dir / "codec.safetensors")


def audio(out: str = "runs/codecs/audio_ae", steps: int = 10000, batch: int = 16, lr: float = 1e-3,
          eval_every: int = 250, seed: int = 0, threads: int = 1, latent_channels: int = 32,
          hidden_channels: int = 256, context_latents: int = 1, layers: int = 2, kl_weight: float = 1e-4,
          convergence_weight: float = 1.0, pool_clips: int = 384) -> None:
    """Train :class:`MelAutoencoder` on 1.04-s windows (26 latents) of impact-sound clips."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    held_out = synthetic_clips(10_000 + seed, range(64))[1]
    mel = MelAudioCodec()
    mel.fit_normalization(held_out.split(16))
    codec = MelAutoencoder(mel=mel, latent_channels=latent_channels, hidden_channels=hidden_channels,
                           context_latents=context_latents, layers=layers)
    pool = ClipPool(pool_clips, seed)
    trainable = [p for n, p in codec.named_parameters() if not n.startswith("mel.")]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    _log(out_dir, {"event": "start", "params": sum(p.numel() for p in trainable), "config": str(codec.init_args)})
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        loss = audio_autoencoder_loss(codec, pool.audio_windows(batch, 26 * 640),
                                      convergence_weight=convergence_weight, kl_weight=kl_weight)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            record = {"step": step + 1, "seconds": round(time.time() - start, 1), "loss": loss.item()}
            record.update(evaluate_audio(codec, held_out))
            _log(out_dir, record)
            codec.fit_normalization(held_out.split(16))
            save_codec(codec, out_dir / "codec.safetensors")


def mel(out: str = "runs/codecs/mel", clips: int = 256, seed: int = 0, threads: int = 1) -> None:
    """Fit :class:`MelAudioCodec`'s normalisation statistics on synthetic clips and save the codec."""
    torch.set_num_threads(threads)
    audio_clips = synthetic_clips(30_000 + seed, range(clips))[1]
    codec = MelAudioCodec()
    codec.fit_normalization(audio_clips.split(16))
    save_codec(codec, Path(out) / "codec.safetensors")
    _log(Path(out), {"event": "fitted", "clips": clips, "mean_std": codec.normalizer.std.mean().item()})


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI([video, audio, mel])
