"""omniforcing.models."""
