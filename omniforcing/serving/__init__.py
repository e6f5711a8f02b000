"""``omniforcing serve``: live audio-video streams into a browser while they are generated (docs/serving.md).

``app`` (aiohttp handlers), ``scheduler`` (the one generation thread, round-robin over streams), ``streams``
(per-stream state and its bounded queue), ``metrics`` (JSON and Prometheus text), ``static/`` (the page).
"""

from omniforcing.serving.app import LiveServer, start_server

__all__ = ["LiveServer", "start_server"]
