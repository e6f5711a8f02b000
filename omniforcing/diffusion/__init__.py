"""omniforcing.diffusion."""
