"""omniforcing.commands."""
