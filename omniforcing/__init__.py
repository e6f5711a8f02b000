"""omniforcing: real-time streaming joint audio-video generation (OmniForcing and Mutual Forcing)."""

__version__ = "0.1.0"
