"""omniforcing.codecs."""
