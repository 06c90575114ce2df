"""``ripple collect``: the HTTP collector for storefronts (SPEC §8).

* ``POST /v1/events`` — events of any input topic, checked by the workers' validation,
  grouped per topic partition and produced as JSON arrays; 202 once the broker has them.
* ``GET /r/{code}`` — records a click for the code's referrer and redirects (302) to the
  code's landing URL, with the ``ripple_vid`` visitor cookie.
* ``GET /ripple.js`` — the storefront snippet; ``GET /healthz``, ``GET /metrics``.

The pure parts (parsing, validation, grouping, hashing, rate limit) are in
:mod:`ripple.collector.intake`. The rest: the producer (confluent-kafka, idempotent, acknowledgements
awaited without blocking the event loop), the reader of the ``codes`` topic, and the
aiohttp handlers. Logs are ``key=value`` lines that never hold an address, a user agent,
a cookie or an event's content.
"""

from ripple.collector.base import DEFAULT_PORT, CollectorError, load_salt
from ripple.collector.kafka import producer_tuning
from ripple.collector.server import run_collector

__all__ = ["DEFAULT_PORT", "CollectorError", "load_salt", "producer_tuning", "run_collector"]
