"""omniforcing.data."""
