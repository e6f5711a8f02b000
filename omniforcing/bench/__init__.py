"""omniforcing.bench."""
