"""omniforcing.callbacks."""
