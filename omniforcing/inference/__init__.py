"""omniforcing.inference."""
