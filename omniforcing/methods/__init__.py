"""omniforcing.methods."""
