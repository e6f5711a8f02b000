"""omniforcing.metrics."""
