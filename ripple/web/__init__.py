"""The web server of the sink process: ``/`` (dashboard), ``/healthz``, ``/metrics``, ``/api/*``
(:mod:`ripple.web.server`), and every query it runs (:mod:`ripple.web.queries`)."""

from ripple.web.server import OffsetMonitor, build_app, serve

__all__ = ["OffsetMonitor", "build_app", "serve"]
