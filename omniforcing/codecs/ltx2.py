"""LTX-2's video VAE behind :class:`~omniforcing.codecs.base.VideoCodec`, loaded from a local folder.

Wraps ``diffusers.AutoencoderKLLTX2Video`` (never copies it). Geometry, read from the VAE config (spatial and
temporal compression ratios) and checked against its down-sampling blocks: at 24 fps with temporal stride 8 a
clip of ``1 + 24 n`` frames has ``1 + 3 n`` latents (latent 0 = frame 0 alone, then 3 per second), and 32x
spatial compression turns 512x768 frames into a 16x24 grid of 128-channel latents.

Normalisation is the VAE's own (``latents_mean`` / ``latents_std`` buffers and ``scaling_factor``), exactly the
pipeline's ``_normalize_latents``: ``(raw - mean) * scaling_factor / std``, held in a
:class:`~omniforcing.codecs.normalization.LatentNormalizer` (``std / scaling_factor`` as its std).

Streaming: LTX-2's video decoder may be non-causal in time (``decoder_causal: false``: its temporal convolutions
pad on both sides), so the frames of a latent depend on latents before *and after* it. Both reaches are measured
on first use (:func:`measure_decode_reach`: gradients through a narrow float64 copy of the decoder with the same
layers): ``decode_context`` latents of left context make a block decoded after ``[context | block]`` equal to
the same frames of decoding everything up to the block's end; the frames of the block's last
``decode_lookahead`` latents still change once later latents exist (a streamed clip differs from the
whole-clip decode there; docs/codecs.md, "LTX-2 codec").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import torch
from diffusers import AutoencoderKLLTX2Video
from torch import Tensor, nn

from omniforcing.codecs.normalization import LatentNormalizer, NormalizedVideoCodec
from omniforcing.errors import InvalidInputError, MissingInputError

LTX2_REPO = "Lightricks/LTX-2"
"""Where the weights come from: https://huggingface.co/Lightricks/LTX-2 (folders vae/, audio_vae/, vocoder/)."""
MAX_REACH = 64
"""Largest decoder reach (latents) :func:`measure_decode_reach` looks for before it gives up."""

Dtype = Literal["float32", "bfloat16"]
M = TypeVar("M", bound=nn.Module)


def torch_dtype(dtype: Dtype) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` -> the torch dtype."""
    if dtype not in ("float32", "bfloat16"):
        raise InvalidInputError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    return torch.float32 if dtype == "float32" else torch.bfloat16


def load_ltx2_part(cls: type[M], pretrained: str | Path, subfolder: str, dtype: Dtype, what: str) -> M:
    """``cls.from_pretrained(pretrained, subfolder=..., local_files_only=True)``, frozen in eval mode.

    Raises:
        MissingInputError: the folder has no ``config.json`` (one line naming what to download and where).
    """
    folder = Path(pretrained) / subfolder
    if not (folder / "config.json").is_file():
        raise MissingInputError(
            f"LTX-2 {what} not found: {folder}/config.json is missing; download {LTX2_REPO} from "
            f"https://huggingface.co/{LTX2_REPO} (its {subfolder}/ folder) into {Path(pretrained)}, "
            f"e.g. `hf download {LTX2_REPO} --include '{subfolder}/*' --local-dir {Path(pretrained)}`")
    model = cls.from_pretrained(str(pretrained), subfolder=subfolder, local_files_only=True,
                                torch_dtype=torch_dtype(dtype),
                                low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class DecodeReach:
    """How far a block decoder looks, in latents.

    Args:
        context: latents before a block that its decoded output depends on (left context to keep).
        lookahead: latents after a block that still change its output (0 for a causal decoder).
    """

    context: int
    lookahead: int


def measure_decode_reach(decode: Callable[[Tensor], Tensor], make_latents: Callable[[int], Tensor],
                         span: Callable[[int], slice]) -> DecodeReach:
    """Measure which latents the output of one latent depends on: the decoder's structural temporal reach.

    The output of latent ``k`` in the middle of a probe clip is back-propagated to the latents; the latents with
    a non-zero gradient are ``k - context .. k + lookahead``. Gradients, unlike output differences, do not cancel
    against float rounding, so the reach is the exact dependency of the layer structure, however weak (run it on
    a :func:`structural_probe`). The probe clip grows (``2 R + 3`` latents, ``R`` = 8, 16, ...
    :data:`MAX_REACH`) until the dependency stays inside it.

    Args:
        decode: latents ``(B, n, ...)`` -> output ``(B, U, ...)`` with time on dim 1.
        make_latents: ``n`` -> probe latents ``(B, n, ...)``.
        span: ``k`` -> the output units (dim 1) of latent ``k``.

    Raises:
        RuntimeError: a reach is :data:`MAX_REACH` or more (e.g. attention over the whole clip).
    """
    bound = 8
    while True:
        latents = make_latents(2 * bound + 3).requires_grad_(True)
        k = bound + 1
        with torch.enable_grad():
            out = decode(latents)[:, span(k)]
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
            (grad,) = torch.autograd.grad((out * weights).sum(), latents)
        reads = grad.abs().flatten(2).amax(dim=(0, 2)).nonzero().flatten()
        context, lookahead = k - int(reads.min()), int(reads.max()) - k
        if max(context, lookahead) < bound:
            return DecodeReach(context, lookahead)
        if bound >= MAX_REACH:
            raise RuntimeError(f"the decoder reaches {MAX_REACH} latents or more; block-wise decoding would need "
                               "the whole history")
        bound *= 2


def structural_probe(build: Callable[[], M]) -> M:
    """A randomly initialised (seed 0, the global RNG untouched) float64 copy built by ``build``, in eval mode.

    Random signed weights make every structural dependency a non-zero gradient (no systematic cancellation).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build()
    return model.double().eval().requires_grad_(False)


class LTX2VideoCodec(NormalizedVideoCodec):
    """LTX-2's video VAE: ``(B, 1 + 8k, 3, H, W)`` in ``[-1, 1]`` <-> normalised ``(B, 1 + k, 128, H/32, W/32)``.

    Encoding takes the posterior mode (deterministic). Decoding is deterministic too: with
    ``timestep_conditioning`` in the VAE config the decoder gets ``decode_timestep``, but no decode noise is
    mixed in (the pipeline's ``decode_noise_scale`` is not applied).

    Args:
        pretrained: the LTX-2 folder (with ``subfolder`` inside).
        subfolder: the video VAE's folder in ``pretrained``.
        size: frame height and width in pixels, multiples of the spatial compression ratio.
        fps: frame rate; a multiple of the temporal stride (3 latents per second at 24 fps, stride 8).
        dtype: weights and compute dtype (latents and frames are returned as float32).
        decode_timestep: decoder timestep when the VAE is timestep-conditioned (the pipeline's default 0).
        context_latents: left context a stream keeps and decodes with each block; ``None`` = the decoder's
            structural reach (exact block-wise decoding, measured on first use: :func:`video_decode_reach`). A
            smaller value trades exactness for speed (the error depends on the trained weights).
    """

    def __init__(self, pretrained: Path, subfolder: str = "vae", size: tuple[int, int] = (512, 768), fps: int = 24,
                 dtype: Dtype = "float32", decode_timestep: float = 0.0, context_latents: int | None = None) -> None:
        super().__init__()
        self.vae = load_ltx2_part(AutoencoderKLLTX2Video, pretrained, subfolder, dtype, "video VAE")
        spatial, temporal = vae_compression(self.vae)
        if size[0] % spatial or size[1] % spatial:
            raise InvalidInputError(f"LTX-2 video frames must be multiples of {spatial} pixels, got {tuple(size)}")
        if fps % temporal:
            raise InvalidInputError(f"fps {fps} must be a multiple of the VAE's temporal stride {temporal}")
        self.size = (size[0], size[1])
        self.fps = fps
        self.temporal_stride = temporal
        self.spatial_stride = spatial
        self.latent_channels = self.vae.config.latent_channels
        self.latent_size = (size[0] // spatial, size[1] // spatial)
        self.decode_timestep = decode_timestep
        self.normalizer = LatentNormalizer(self.latent_channels)
        scale = self.vae.config.scaling_factor
        self.normalizer.mean.copy_(self.vae.latents_mean.float())
        self.normalizer.std.copy_(self.vae.latents_std.float() / scale)
        if context_latents is not None and context_latents < 1:
            raise InvalidInputError(f"context_latents must be >= 1, got {context_latents}")
        self.context_latents = context_latents

    @property
    def decode_reach(self) -> DecodeReach:
        """The decoder's structural temporal reach in latents (measured once per VAE config)."""
        return video_decode_reach(self.vae)

    @property
    def decode_context(self) -> int:  # type: ignore[override]
        """Latents before a block that block-wise decoding reads (``context_latents`` or the decoder's reach)."""
        return self.decode_reach.context if self.context_latents is None else self.context_latents

    @property
    def decode_lookahead(self) -> int:  # type: ignore[override]
        """Latents after a block that still change its frames (0 when the decoder is causal)."""
        return self.decode_reach.lookahead

    @property
    def dtype(self) -> torch.dtype:
        """The VAE's weight dtype."""
        return self.vae.dtype

    def encode_raw(self, video: Tensor) -> Tensor:
        """``(B, 1 + 8k, 3, H, W)`` -> raw posterior modes ``(B, 1 + k, C, h, w)`` (float32)."""
        self.check_video(video)
        moments = self.vae.encode(video.to(self.dtype).transpose(1, 2)).latent_dist
        return moments.mode().float().transpose(1, 2)

    def decode_raw(self, raw: Tensor) -> Tensor:
        """Raw latents ``(B, 1 + k, C, h, w)`` -> frames ``(B, 1 + 8k, 3, H, W)`` in ``[-1, 1]`` (float32)."""
        self.check_latents(raw)
        return decode_frames(self.vae, raw.to(self.dtype), self.decode_timestep).float().clamp(-1, 1)

    def decode_tail(self, latents: Tensor, count: int, from_clip_start: bool = True) -> Tensor:
        """Frames of the last ``count`` normalised latents of ``(B, N, C, h, w)``, reading ``decode_context`` before.

        Returns ``(B, 8 count, 3, H, W)``, or the whole clip from frame 0 when ``count == N`` and the window
        starts at the clip (``from_clip_start``). Equal to the same frames of :meth:`decode` on all latents up
        to the window's end (tested); the frames of the last ``decode_lookahead`` latents change once later
        latents exist, since the decoder is not causal.
        """
        n = latents.shape[1]
        if not 1 <= count <= n:
            raise ValueError(f"count must be in 1..{n}, got {count}")
        context = max(1, self.decode_context)  # the window's first latent decodes as a lone lead frame
        if not from_clip_start and n - count < context:
            raise ValueError(f"a mid-stream window needs {context} context latent(s) before the {count} to decode, "
                             f"got {n - count}")
        start = max(0, n - count - context)
        frames = self.decode(latents[:, start:])
        return frames if start == 0 and count == n and from_clip_start else frames[:, -self.temporal_stride * count:]


def decode_frames(vae: AutoencoderKLLTX2Video, raw: Tensor, decode_timestep: float = 0.0) -> Tensor:
    """Raw latents ``(B, N, C, h, w)`` -> frames ``(B, 1 + 8 (N - 1), 3, H, W)`` (unclamped, the VAE's dtype)."""
    temb = None
    if vae.config.timestep_conditioning:
        temb = torch.full((raw.shape[0],), decode_timestep, device=raw.device, dtype=raw.dtype)
    return vae.decode(raw.transpose(1, 2), temb).sample.transpose(1, 2)


def vae_compression(vae: AutoencoderKLLTX2Video) -> tuple[int, int]:
    """(spatial, temporal) compression ratios from the config, checked against the down-sampling blocks.

    diffusers derives unset ratios as ``patch_size * 2 ** sum(spatio_temporal_scaling)`` for both axes, which
    is wrong for LTX-2's mix of spatial / temporal / spatiotemporal down-samplers; LTX-2's config sets them.
    """
    config = vae.config
    scaling = config.spatio_temporal_scaling
    flags = (scaling,) * len(config.down_block_types) if isinstance(scaling, bool) else tuple(scaling)
    kinds = [kind for kind, on in zip(config.downsample_type, flags, strict=False) if on]
    spatial = config.patch_size * 2 ** sum(kind in ("spatial", "spatiotemporal") for kind in kinds)
    temporal = config.patch_size_t * 2 ** sum(kind in ("temporal", "spatiotemporal") for kind in kinds)
    if (vae.spatial_compression_ratio, vae.temporal_compression_ratio) != (spatial, temporal):
        raise InvalidInputError(
            f"LTX-2 video VAE config: compression ratios (spatial {vae.spatial_compression_ratio}, temporal "
            f"{vae.temporal_compression_ratio}) disagree with its down-sampling blocks (spatial {spatial}, temporal "
            f"{temporal}); set spatial_compression_ratio / temporal_compression_ratio in its config.json")
    return spatial, temporal


def narrow_channels(channels: tuple[int, ...] | list[int], smallest: int) -> list[int]:
    """Channel widths scaled so the narrowest is ``smallest`` (same ratios: the probe keeps the layer structure)."""
    return [c * smallest // min(channels) for c in channels]


_REACH_CACHE: dict[str, DecodeReach] = {}


def video_decode_reach(vae: AutoencoderKLLTX2Video) -> DecodeReach:
    """The decoder reach of this VAE config, measured on a structural probe (cached per config).

    The reach depends only on the temporal layer structure (kernel sizes, layer counts, up-sampling, causal
    padding), so the probe keeps every layer and shrinks what does not matter: channels (narrowest 8), the
    spatial patch (1) and the grid (1x1 latents, zero spatial padding).
    """
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    key = repr(sorted(config.items()))
    if key not in _REACH_CACHE:
        config.update(block_out_channels=narrow_channels(config["block_out_channels"], 8),
                      decoder_block_out_channels=narrow_channels(config["decoder_block_out_channels"], 8),
                      patch_size=1, encoder_spatial_padding_mode="zeros", decoder_spatial_padding_mode="zeros")
        probe = structural_probe(lambda: AutoencoderKLLTX2Video.from_config(config))
        channels, stride = probe.config.latent_channels, vae.temporal_compression_ratio
        seeded = torch.Generator().manual_seed(0)
        _REACH_CACHE[key] = measure_decode_reach(  # latent k >= 1: frames 8k - 7 .. 8k
            lambda z: decode_frames(probe, z),
            lambda n: torch.randn(1, n, channels, 1, 1, generator=seeded.manual_seed(0), dtype=torch.float64),
            lambda k: slice(max(0, 1 + stride * (k - 1)), 1 + stride * k))
    return _REACH_CACHE[key]
