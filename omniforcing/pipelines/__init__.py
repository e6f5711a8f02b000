"""One-command pipelines chaining training stages, export and generation (each a ``python -m`` entry point)."""
