"""What the collector does with a request, as pure functions: no aiohttp, no Kafka.

* :func:`parse_body` reads a JSON object, a JSON array or NDJSON into a list of items.
* :func:`prepare` maps each item's ``type`` to its topic, fills ``ip_hash`` and
  ``user_agent`` from the request where asked, and checks the event with the workers' own
  validation (:func:`streams.events.validate`, the per-event check of
  :func:`streams.events.decode`), so the collector accepts exactly what the workers accept.
* :func:`messages` groups accepted events by topic and partition (murmur2 of the topic's
  key, the partition the workers read them from) into JSON arrays of bounded size.
* :class:`IpHasher` turns a client address into an ``ip_hash`` (HMAC-SHA256 with a salt);
  :class:`TokenBuckets` is the per-client rate limit; :func:`referral_click` builds the
  click of a ``/r/{code}`` link.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from streams.events import MAX_FUTURE_MS, validate
from streams.kafka import Arrays, Secret, json_array
from streams.partitioner import partition_of

#: the ``type`` of an event and the topic it goes to (SPEC §2, §8)
TOPICS = {"view": "views", "click": "clicks", "order": "orders", "refund": "refunds"}
#: topics whose events may be filled with the client's ip_hash and user agent
ENRICHED_TOPICS = ("clicks", "orders")
#: the longest event accepted, as the JSON the collector produces
MAX_EVENT_BYTES = 512 * 1024
#: a Kafka message holds events up to about this many bytes, and at most this many events
CHUNK_BYTES = 256 * 1024
CHUNK_EVENTS = 500
#: field lengths of what the collector fills in (the schemas' limits)
MAX_USER_AGENT = 512
MAX_DOMAIN = 253
MAX_URL = 2048
MAX_UTM = 256
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_content")
#: the visitor cookie of /r/{code} and of the snippet, and the landing-page parameter that
#: hands the visitor id from the collector's domain to the shop's
VISITOR_COOKIE = "ripple_vid"
VISITOR_PARAM = "ripple_vid"
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


class BodyError(ValueError):
    """A request body the collector cannot read: ``status`` 400 (malformed) or 413 (too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_body(raw: bytes, max_events: int) -> list[Any]:
    """The items of a body: one JSON object, a JSON array, or NDJSON (one JSON value a
    line, blank lines skipped). Raises :class:`BodyError`."""
    if not raw.strip():
        raise BodyError(400, "empty body: send a JSON object, a JSON array of events, or NDJSON")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        lines = [line for line in raw.split(b"\n") if line.strip()]
        if len(lines) < 2:
            raise BodyError(400, f"body is not JSON: {exc}") from None
        return _ndjson(lines, max_events)
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise BodyError(400, f"body must be a JSON object, a JSON array of objects or NDJSON, not {_kind(value)}")
    if len(value) > max_events:
        raise BodyError(413, f"{len(value)} events in one request, over the limit of {max_events}")
    return value


def _ndjson(lines: list[bytes], max_events: int) -> list[Any]:
    if len(lines) > max_events:
        raise BodyError(413, f"{len(lines)} events in one request, over the limit of {max_events}")
    items = []
    for number, line in enumerate(lines, 1):
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise BodyError(400, f"NDJSON line {number} is not JSON: {exc}") from None
    return items


def _kind(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(type(value), "null")


def topic_key(topic: str, event: Mapping[str, Any]) -> str:
    """The Kafka key of an event (SPEC §2): views by visitor, or creator when anonymous;
    clicks and orders by visitor; refunds by order."""
    if topic == "refunds":
        return str(event["order_id"])
    if topic == "views":
        return str(event.get("visitor_id") or event["creator_id"])
    return str(event["visitor_id"])


@dataclass(frozen=True, slots=True)
class Client:
    """What the request says about its sender, filled into events that lack it."""

    ip_hash: str | None
    user_agent: str | None


@dataclass
class Prepared:
    """Accepted events as (index in the request, topic, event); rejections as (index, error)."""

    accepted: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def prepare(
    items: list[Any], now_ms: int, max_future_ms: int = MAX_FUTURE_MS, client: Client | None = None
) -> Prepared:
    """Check every item; ``client`` (a browser's request) sets ``ip_hash`` and
    ``user_agent`` of clicks and orders to the request's, whatever the event says; a
    server's request (no client) sends its own. ``type`` is not part of what is produced:
    the topic says it.

    An item may carry ``sent_ts``, its sender's clock when it was sent (the snippet stamps
    every batch): its ``ts`` is then shifted by ``now_ms - sent_ts``, so an event from a
    browser whose clock is hours off reaches the topics in server time (Segment's
    ``sentAt``/``receivedAt`` correction) and is neither refused as future nor late."""
    out = Prepared()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            out.rejected.append((index, f"event must be a JSON object, got {type(item).__name__}"))
            continue
        kind = item.get("type")
        topic = TOPICS.get(kind) if isinstance(kind, str) else None
        if topic is None:
            shown = "missing" if kind is None else "unknown"
            out.rejected.append((index, f"type is {shown}: it must be one of {', '.join(TOPICS)}"))
            continue
        event = {k: v for k, v in item.items() if k not in ("type", "sent_ts")}
        shift = clock_shift(item, now_ms)
        if isinstance(shift, str):
            out.rejected.append((index, shift))
            continue
        if shift and isinstance(event.get("ts"), int) and not isinstance(event["ts"], bool):
            event["ts"] += shift
        if client is not None and topic in ENRICHED_TOPICS:
            # a browser's request says who sent it: what the event claims is replaced, so a
            # script cannot pick its own ip_hash or user agent and slip past click_flood
            # and bot_click
            event.pop("ip_hash", None)
            event.pop("user_agent", None)
            if client.ip_hash is not None:
                event["ip_hash"] = client.ip_hash
            if client.user_agent:
                event["user_agent"] = client.user_agent[:MAX_USER_AGENT]
        error = validate(topic, event, now_ms, max_future_ms)
        if error is None:
            size = len(orjson.dumps(event))
            if size > MAX_EVENT_BYTES:
                error = f"event of {size} bytes is over the limit of {MAX_EVENT_BYTES}"
        if error is None:
            out.accepted.append((index, topic, event))
        else:
            out.rejected.append((index, error))
    return out


def clock_shift(item: Mapping[str, Any], now_ms: int) -> int | str:
    """How far to move the item's ``ts`` (0 without ``sent_ts``), or why it cannot be."""
    sent = item.get("sent_ts")
    if sent is None:
        return 0
    if isinstance(sent, bool) or not isinstance(sent, int) or sent <= 0:
        return "sent_ts must be a positive integer (epoch milliseconds of the sender's clock)"
    return now_ms - sent


#: the reason label of a rejection (a fixed set: no value from the event)
REASONS = (
    ("type is", "type"),
    ("event must be a JSON object", "not_object"),
    ("event nests", "too_deep"),
    ("event of", "too_large"),
    ("schema:", "schema"),
    ("ts ", "future"),
    ("sent_ts", "schema"),
)


def reason(error: str) -> str:
    """The Prometheus label for a rejection's error."""
    if "looks like a raw" in error:
        return "raw_identity"
    for prefix, label in REASONS:
        if error.startswith(prefix):
            return label
    return "other"


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka message: a JSON array of events of one topic partition."""

    topic: str
    partition: int
    key: bytes
    value: bytes
    indexes: tuple[int, ...]  # the events' positions in the request


def messages(
    accepted: Iterable[tuple[int, str, dict[str, Any]]],
    partitions: Mapping[str, int],
    max_bytes: int = CHUNK_BYTES,
    max_events: int = CHUNK_EVENTS,
) -> list[Message]:
    """Group events by (topic, partition of their key) and cut each group into JSON arrays
    of at most ``max_bytes`` (or one event, whatever its size) and ``max_events`` events,
    in request order."""
    # a message's bytes: its brackets, and each event with its comma
    arrays: Arrays[tuple[int, str, bytes]] = Arrays(
        max_bytes=max_bytes, max_items=max_events, size=lambda item: len(item[2]) + 1, framing=2
    )
    for index, topic, event in accepted:
        key = topic_key(topic, event)
        arrays.add((topic, partition_of(key, partitions[topic])), (index, key, orjson.dumps(event)))
    return [
        Message(
            topic,
            partition,
            chunk[0][1].encode(),
            json_array(raw for _, _, raw in chunk),
            tuple(i for i, _, _ in chunk),
        )
        for (topic, partition), chunk in arrays.drain()
    ]


class IpHasher:
    """``ip_hash`` of a client address: ``h:`` and 32 hex digits of HMAC-SHA256 keyed with
    the salt, over the address in canonical form (an IPv4-mapped IPv6 address counts as
    its IPv4 address). The workers accept it as an opaque hash; the address is not kept."""

    PREFIX = "h:"

    def __init__(self, salt: Secret) -> None:
        self._key = salt.get().encode()

    def __repr__(self) -> str:
        return "IpHasher('**********')"

    def __call__(self, address: str | None) -> str | None:
        if not address:
            return None
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]").partition("%")[0])
        except ValueError:
            canonical = address.strip().lower()  # not an address (a unix socket): hashed as it is
        else:
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            canonical = str(mapped or ip)
        digest = hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()
        return self.PREFIX + digest[:32]


def forwarded_by_proxy(header: str, proxies: int) -> str:
    """The entry of a comma-separated ``X-Forwarded-*`` header that the outermost of
    ``proxies`` trusted proxies wrote ("" when there is none)."""
    hops = [h.strip() for h in header.split(",") if h.strip()]
    if not hops or proxies <= 0:
        return ""
    return hops[-proxies] if len(hops) >= proxies else hops[0]


def client_address(peer: str | None, forwarded_for: str | None, proxies: int) -> str | None:
    """The client's address: the peer's, or with ``proxies`` trusted reverse proxies in
    front, the entry of ``X-Forwarded-For`` they appended for the client."""
    if proxies <= 0 or not forwarded_for:
        return peer
    return forwarded_by_proxy(forwarded_for, proxies) or peer


class TokenBuckets:
    """A token bucket per client key: ``rate`` tokens a second up to ``burst``; ``rate``
    0 lets everything through. Keys of full buckets are dropped, so memory stays bounded
    by the clients active in the last ``burst / rate`` seconds (and ``max_keys``)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time)
        self._swept = 0.0

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 when the request may pass (a token is taken), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys or now - self._swept > 60:
            self._sweep(now)
        return 0.0

    def _sweep(self, now: float) -> None:
        self._swept = now
        refill = self.burst / self.rate
        for key, (_, last) in list(self._buckets.items()):
            if now - last >= refill:
                del self._buckets[key]
        while len(self._buckets) > self.max_keys:  # still too many: the oldest go
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


def origin_allowed(origin: str, allowed: tuple[str, ...], own: str) -> bool:
    """Whether a browser ``Origin`` may post: the collector's own origin, one on the
    allowlist, or any when the allowlist holds ``*``."""
    origin = origin.rstrip("/")
    return origin == own or "*" in allowed or origin in allowed


def visitor_id(value: str | None) -> str | None:
    """A visitor id as the collector and the snippet make them (22 URL-safe characters), or
    None for anything else a cookie or parameter may carry."""
    return value if value is not None and _VISITOR_ID.fullmatch(value) else None


def referrer_domain(referer: str | None) -> str | None:
    """The host of a ``Referer`` header, without ``www.``."""
    if not referer:
        return None
    try:
        host = urlsplit(referer).hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host.lower()
    return (host[4:] if host.startswith("www.") else host)[:MAX_DOMAIN]


def with_param(url: str, name: str, value: str) -> str:
    """``url`` with the query parameter ``name`` set to ``value``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    query.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(query)))


def safe_landing(url: str | None) -> str | None:
    """A landing URL the collector redirects to: absolute http(s) only."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc and len(url) <= MAX_URL else None


def referral_click(
    *,
    event_id: str,
    now_ms: int,
    visitor: str,
    code: str,
    referrer_id: str | None,
    query: Mapping[str, str],
    client: Client,
    referer: str | None,
    landing_url: str | None,
) -> dict[str, Any]:
    """The click a ``/r/{code}`` link records."""
    click: dict[str, Any] = {"event_id": event_id, "ts": now_ms, "visitor_id": visitor, "ref": code}
    if referrer_id:
        click["creator_id"] = referrer_id
    for name in UTM_FIELDS:
        value = query.get(name)
        if value:
            click[name] = value[:MAX_UTM]
    if client.ip_hash:
        click["ip_hash"] = client.ip_hash
    if client.user_agent:
        click["user_agent"] = client.user_agent[:MAX_USER_AGENT]
    domain = referrer_domain(referer)
    if domain:
        click["referrer_domain"] = domain
    if landing_url:
        click["landing_url"] = landing_url[:MAX_URL]
    return click
