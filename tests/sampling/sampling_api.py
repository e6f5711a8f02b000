from omniforcing.diffusion.samplers import sample_few_step
from omniforcing.inference.denoise import GuidedDenoiser
from omniforcing.inference.dual_mode import DualModes, stream_blocks
from omniforcing.inference.stream_settings import StreamingSettings
from omniforcing.inference.streaming import StreamingGenerator
from omniforcing.methods.dmd import backward_simulation
