"""omniforcing.training."""
