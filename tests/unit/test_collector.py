"""The collector's pure parts (ripple/collector/intake.py): reading bodies, validation (the workers'
own), grouping by partition (the workers' placement), ip hashing, the rate limit, and the
collector's settings. No broker, no HTTP: tests/integration/test_collector_service.py runs those."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from hostile import Generator, corpus

from ripple.checks import ConfigError, collector_origins
from ripple.collector import load_salt, producer_tuning
from ripple.collector.intake import (
    CHUNK_BYTES,
    MAX_EVENT_BYTES,
    TOPICS,
    BodyError,
    Client,
    IpHasher,
    TokenBuckets,
    client_address,
    forwarded_by_proxy,
    messages,
    origin_allowed,
    parse_body,
    prepare,
    reason,
    referral_click,
    referrer_domain,
    safe_landing,
    topic_key,
    visitor_id,
    with_param,
)
from ripple.config import load_settings
from ripple.simulator import SimConfig, generate
from streams.events import decode, message_time, raw_identity, validate
from streams.kafka import Secret, producer_config
from streams.partitioner import partition_for

DAY_MS = 86_400_000
NOW = 1_767_225_600_000 + 30 * DAY_MS
TYPE_OF = {topic: kind for kind, topic in TOPICS.items()}
SALT = Secret("pepper-" + "x" * 20)


def view(i: int, **extra: Any) -> dict[str, Any]:
    return {"type": "view", "event_id": f"v-{i}", "ts": NOW, "creator_id": "cr-1", "content_id": "p-1", **extra}


def click(i: int, **extra: Any) -> dict[str, Any]:
    return {"type": "click", "event_id": f"c-{i}", "ts": NOW, "visitor_id": f"vis-{i}", "ref": "JANE20", **extra}


# -- bodies --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Body:
    raw: bytes
    events: int | None = None  # items read, or None when refused
    status: int = 0  # 400 or 413 when refused


BODIES = {
    # one JSON object is one event
    "object": Body(b'{"type": "view"}', 1),
    # a JSON array: each element an item, objects or not (elements are judged one by one)
    "array": Body(b'[{"type": "view"}, 3, {"type": "click"}]', 3),
    "empty array": Body(b"[]", 0),
    # NDJSON: one value a line; blank lines and a final newline are skipped
    "ndjson": Body(b'{"type": "view"}\n\n{"type": "click"}\n', 2),
    "ndjson crlf": Body(b'{"type": "view"}\r\n{"type": "click"}\r\n', 2),
    # anything else is a malformed body: 400 with the reason
    "empty": Body(b"", status=400),
    "blank": Body(b" \n ", status=400),
    "not json": Body(b"type=view", status=400),
    "cut short": Body(b'{"type": "view"', status=400),
    "scalar": Body(b'"view"', status=400),
    "null": Body(b"null", status=400),
    "ndjson bad line": Body(b'{"type": "view"}\n{"type": \n', status=400),
    "two objects on one line": Body(b'{"a": 1}{"b": 2}', status=400),
    "not utf-8": Body(b'{"type": "\xff"}', status=400),
    # an integer beyond 64 bits reads as a float: one event, refused by the schema check
    "integer beyond 64 bits": Body(b'{"ts": 123456789012345678901234567890}', 1),
    # more events than allowed: 413, in either form
    "array over the limit": Body(b"[" + b",".join([b"{}"] * 11) + b"]", status=413),
    "ndjson over the limit": Body(b"{}\n" * 11, status=413),
}


@pytest.mark.parametrize("case", list(BODIES.values()), ids=list(BODIES))
def test_bodies(case: Body) -> None:
    if case.status:
        with pytest.raises(BodyError) as exc:
            parse_body(case.raw, max_events=10)
        assert exc.value.status == case.status
        assert str(exc.value)  # a reason for the client
    else:
        assert len(parse_body(case.raw, max_events=10)) == case.events


# -- validation: what the workers accept ---------------------------------------------------
def test_type_chooses_the_topic_and_is_not_produced() -> None:
    items = [
        view(1),
        click(2),
        {"type": "order", "event_id": "o-1", "ts": NOW, "order_id": "o1", "visitor_id": "vis-1",
         "customer_id": "cu-1", "amount_minor": 5999, "currency": "EUR"},
        {"type": "refund", "event_id": "rf-1", "ts": NOW, "order_id": "o1", "amount_minor": 100},
    ]  # fmt: skip
    prepared = prepare(items, NOW)
    assert prepared.rejected == []
    assert [(i, topic) for i, topic, _ in prepared.accepted] == [
        (0, "views"),
        (1, "clicks"),
        (2, "orders"),
        (3, "refunds"),
    ]
    assert all("type" not in event for _, _, event in prepared.accepted)


@pytest.mark.parametrize(
    "skew_ms",
    [2 * 3_600_000, -2 * 3_600_000, 3 * DAY_MS, 0],
    ids=["two hours fast", "two hours slow", "three days fast", "exact"],
)
def test_a_browser_clock_is_corrected_by_its_send_time(skew_ms: int) -> None:
    """The snippet stamps each batch with its clock (``sent_ts``); the collector moves every
    ``ts`` by its own receive time minus that, so a laptop whose clock is off is neither
    refused as future nor late: the click lands 1.5 s before the collector got it."""
    browser_now = NOW + skew_ms
    item = click(1, ts=browser_now - 1500, sent_ts=browser_now)
    prepared = prepare([item], NOW)
    assert prepared.rejected == []
    [(_, _, event)] = prepared.accepted
    assert event["ts"] == NOW - 1500
    assert "sent_ts" not in event  # not a field of the topics


def test_without_sent_ts_a_fast_browser_clock_is_refused() -> None:
    [(_, error)] = prepare([click(1, ts=NOW + 2 * 3_600_000)], NOW).rejected
    assert reason(error) == "future"


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@dataclass(frozen=True)
class Refusal:
    item: Any
    reason: str  # the metric's label
    needle: str  # part of the error returned to the client


REFUSALS = {
    "no type": Refusal({"event_id": "x", "ts": NOW}, "type", "type is missing"),
    "unknown type": Refusal({**view(1), "type": "views"}, "type", "must be one of view, click, order, refund"),
    "type not a string": Refusal({**view(1), "type": 1}, "type", "type is unknown"),
    "not an object": Refusal([view(1)], "not_object", "must be a JSON object"),
    "missing field": Refusal({k: v for k, v in view(1).items() if k != "content_id"}, "schema", "content_id"),
    "negative amount": Refusal(
        {"type": "refund", "event_id": "r", "ts": NOW, "order_id": "o", "amount_minor": -5}, "schema", "amount_minor"
    ),
    "integer as float": Refusal({**view(1), "ts": float(NOW)}, "schema", "integer"),
    "raw ip in ip_hash": Refusal(click(1, ip_hash="203.0.113.9"), "raw_identity", "ip_hash looks like a raw IP"),
    "far future": Refusal(view(1, ts=NOW + 2 * DAY_MS), "future", "ahead of the message time"),
    # max_future is 5 minutes, as in the worker and the sink (one setting)
    "six minutes ahead": Refusal(view(1, ts=NOW + 6 * 60_000), "future", "ahead of the message time"),
    "sent_ts not an integer": Refusal(view(1, sent_ts="now"), "schema", "sent_ts must be a positive integer"),
    "sent_ts a float": Refusal(view(1, sent_ts=float(NOW)), "schema", "sent_ts must be a positive integer"),
    "deep nesting": Refusal(view(1, extra=nested(40)), "too_deep", "nests"),
    "over the event limit": Refusal(view(1, note="n" * MAX_EVENT_BYTES), "too_large", "over the limit"),
}


@pytest.mark.parametrize("case", list(REFUSALS.values()), ids=list(REFUSALS))
def test_refusals_say_why(case: Refusal) -> None:
    prepared = prepare([view(0), case.item], NOW)
    assert [i for i, _, _ in prepared.accepted] == [0]
    [(index, error)] = prepared.rejected
    assert index == 1
    assert case.needle in error
    assert reason(error) == case.reason
    assert "203.0.113.9" not in error  # a raw identity is never repeated


def test_the_collector_accepts_exactly_what_the_workers_accept() -> None:
    """Every event of the simulator and of the hostile corpus of tests/unit/test_events.py, posted
    with its type: accepted by the collector if and only if the worker's decode takes it from
    a Kafka message (the one difference: an event over the collector's per-event limit)."""
    ds = generate(SimConfig(seed=9, start_ms=NOW - 20 * DAY_MS, views=300))
    gen = Generator(9, ds, NOW)
    checked = 0
    for h in corpus(gen, singles=1500, events=5000) + [gen.wrap(m) for m in ds.events if m.event is not None]:
        if h.topic not in TYPE_OF or h.value is None or h.timestamp:
            continue
        try:
            value = orjson.loads(h.value)
        except orjson.JSONDecodeError:
            continue  # not JSON: a 400 for the whole body, see test_bodies
        if not isinstance(value, dict | list):
            continue  # a scalar: a 400 for the whole body
        items = value if isinstance(value, list) else [value]
        if len(items) > 10_000:
            continue  # over the batch limit: a 413, see test_bodies
        _, bad = decode(h.topic, h.value, message_time(NOW, NOW))
        if isinstance(value, dict) and bad:
            worker_bad = {0}
        else:
            worker_bad = {r.index for r in bad}
        posted = [{**item, "type": TYPE_OF[h.topic]} if isinstance(item, dict) else item for item in items]
        prepared = prepare(posted, NOW)
        collector_bad = {i for i, error in prepared.rejected if reason(error) != "too_large"}
        too_large = {i for i, error in prepared.rejected if reason(error) == "too_large"}
        assert collector_bad == worker_bad - too_large, (h.kind, h.topic)
        assert all(len(orjson.dumps(items[i])) > MAX_EVENT_BYTES for i in too_large)
        checked += len(items)
    assert checked > 5000


# -- enrichment ---------------------------------------------------------------------------------
def test_a_browser_request_sets_ip_hash_and_user_agent_whatever_its_events_say() -> None:
    browser = Client("h:" + "a" * 32, "Mozilla/5.0 " + "x" * 600)
    order = {"type": "order", "event_id": "o", "ts": NOW, "order_id": "o", "visitor_id": "v", "customer_id": "c",
             "amount_minor": 1, "currency": "EUR"}  # fmt: skip
    items = [click(1), click(2, ip_hash="h:own-hash-1234", user_agent="own"), order, view(3)]
    events = {i: e for i, _, e in prepare(items, NOW, client=browser).accepted}
    assert events[0]["ip_hash"] == browser.ip_hash
    assert events[0]["user_agent"] == browser.user_agent[:512]  # the schema's limit
    # a script in the page cannot choose its own and slip past click_flood and bot_click
    assert (events[1]["ip_hash"], events[1]["user_agent"]) == (browser.ip_hash, browser.user_agent[:512])
    assert events[2]["ip_hash"] == browser.ip_hash
    assert "ip_hash" not in events[3] and "user_agent" not in events[3]  # views carry neither
    # a request without a user agent (or an address) takes the event's away too
    [(_, _, bare)] = prepare(
        [click(2, ip_hash="h:own-hash-1234", user_agent="own")], NOW, client=Client(None, None)
    ).accepted
    assert "ip_hash" not in bare and "user_agent" not in bare
    # no client (a server's request): nothing added, the server's own kept
    assert all("ip_hash" not in e for _, _, e in prepare([click(1), order], NOW).accepted)
    [(_, _, server)] = prepare([click(2, ip_hash="h:own-hash-1234", user_agent="own")], NOW).accepted
    assert (server["ip_hash"], server["user_agent"]) == ("h:own-hash-1234", "own")


def test_a_forwarded_header_is_read_at_the_outermost_trusted_proxy() -> None:
    assert forwarded_by_proxy("https", 1) == "https"
    assert forwarded_by_proxy("http, https", 1) == "https"  # a client's own entry comes first
    assert forwarded_by_proxy("http, https", 2) == "http"
    assert forwarded_by_proxy("https", 3) == "https"  # fewer entries than proxies: the first
    assert forwarded_by_proxy("", 1) == "" and forwarded_by_proxy("https", 0) == ""


# -- partitions -------------------------------------------------------------------------------
def test_keys_per_topic() -> None:
    assert topic_key("views", {"visitor_id": "vis", "creator_id": "cr"}) == "vis"
    assert topic_key("views", {"creator_id": "cr"}) == "cr"  # anonymous view
    assert topic_key("clicks", {"visitor_id": "vis"}) == "vis"
    assert topic_key("orders", {"visitor_id": "vis", "order_id": "o"}) == "vis"
    assert topic_key("refunds", {"order_id": "o", "visitor_id": "vis"}) == "o"


def test_500_events_become_one_message_per_partition_placed_as_the_workers_place_them() -> None:
    items = [view(i, visitor_id=f"vis-{i % 97}") for i in range(200)]
    items += [click(i) for i in range(200)]
    items += [view(1000 + i) for i in range(100)]  # anonymous: keyed by creator, all in one partition
    prepared = prepare(items, NOW)
    assert len(prepared.accepted) == 500
    partitions = {"views": 8, "clicks": 8, "orders": 8, "refunds": 8}
    out = messages(prepared.accepted, partitions)
    assert len(out) <= 16  # two topics, eight partitions each
    java = DefaultPartitioner()  # what aiokafka, Faust and the Java client choose
    parts = list(range(8))
    seen: list[int] = []
    for m in out:
        events = orjson.loads(m.value)
        assert isinstance(events, list) and len(events) == len(m.indexes)
        for index, event in zip(m.indexes, events, strict=True):
            key = topic_key(m.topic, event).encode()
            assert m.partition == partition_for(key, 8) == java(key, parts, parts)
            assert event == prepared.accepted[index][2]
        # what the worker reads from this message: every event, none dead-lettered
        good, bad = decode(m.topic, m.value, NOW)
        assert (len(good), bad) == (len(events), [])
        seen.extend(m.indexes)
    assert sorted(seen) == list(range(500))
    # within a partition, events keep the order of the request
    for m in out:
        assert list(m.indexes) == sorted(m.indexes)


def test_messages_are_bounded_in_bytes_and_events() -> None:
    items = [view(i, visitor_id="same-visitor", note="n" * 2000) for i in range(600)]
    out = messages(prepare(items, NOW).accepted, {"views": 4})
    assert len({m.partition for m in out}) == 1
    assert all(len(m.value) <= CHUNK_BYTES for m in out)
    assert sum(len(m.indexes) for m in out) == 600
    assert all(len(m.value) > CHUNK_BYTES - 2200 for m in out[:-1])  # full, but for the last
    small = messages(
        prepare([view(i, visitor_id="v") for i in range(1200)], NOW).accepted, {"views": 4}, max_events=500
    )
    assert [len(m.indexes) for m in small] == [500, 500, 200]


# -- hashing -----------------------------------------------------------------------------------
def test_ip_hash_is_a_keyed_hash_the_workers_accept() -> None:
    hasher = IpHasher(SALT)
    value = hasher("203.0.113.9")
    assert value is not None and re.fullmatch(r"h:[0-9a-f]{32}", value)
    expected = hmac.new(SALT.get().encode(), b"203.0.113.9", hashlib.sha256).hexdigest()[:32]
    assert value == "h:" + expected
    assert hasher("203.0.113.9") == value  # stable
    assert IpHasher(Secret("another-salt-" + "y" * 10))("203.0.113.9") != value  # salted
    assert hasher("203.0.113.10") != value
    # one address, however it is written
    assert hasher("::ffff:203.0.113.9") == value
    assert hasher("2001:db8::1") == hasher("2001:0DB8:0:0::1") == hasher("[2001:db8::1]")
    # the workers take it as an opaque hash, in clicks and orders
    assert raw_identity(value) is None
    assert (
        validate("clicks", {"event_id": "c", "ts": NOW, "visitor_id": "v", "ref": "r", "ip_hash": value}, NOW) is None
    )
    assert "203" not in value and SALT.get() not in repr(hasher)
    assert hasher(None) is None and hasher("") is None


def test_client_address_behind_trusted_proxies() -> None:
    assert client_address("10.0.0.2", "198.51.100.7", proxies=0) == "10.0.0.2"  # not trusted: the peer
    assert client_address("10.0.0.2", "198.51.100.7", proxies=1) == "198.51.100.7"
    # a client may forge entries on the left; the trusted proxies' own are on the right
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.7", proxies=1) == "198.51.100.7"
    assert client_address("10.0.0.3", "6.6.6.6, 198.51.100.7, 10.0.0.2", proxies=2) == "198.51.100.7"
    assert client_address("10.0.0.2", None, proxies=1) == "10.0.0.2"


# -- rate limit ---------------------------------------------------------------------------------
def test_token_bucket() -> None:
    buckets = TokenBuckets(rate=2, burst=5)
    assert [buckets.take("a", now=100.0) for _ in range(5)] == [0.0] * 5  # the burst
    assert buckets.take("a", now=100.0) == pytest.approx(0.5)  # then one token every 1/rate s
    assert buckets.take("b", now=100.0) == 0.0  # per client
    assert buckets.take("a", now=100.5) == 0.0
    assert buckets.take("a", now=100.5) > 0
    assert buckets.take("a", now=110.0) == 0.0  # refilled, never above the burst
    assert [buckets.take("a", now=110.0) for _ in range(4)] == [0.0] * 4
    assert buckets.take("a", now=110.0) > 0
    unlimited = TokenBuckets(rate=0, burst=1)
    assert all(unlimited.take("a", now=1.0) == 0.0 for _ in range(1000))


def test_token_buckets_forget_idle_clients() -> None:
    buckets = TokenBuckets(rate=10, burst=10, max_keys=100)
    for i in range(1000):
        buckets.take(f"client-{i}", now=float(i) * 0.001)
    assert len(buckets) <= 101
    buckets.take("late", now=1000.0)  # a minute on: everyone else's bucket is full again
    assert len(buckets) == 1


# -- referral links, origins ----------------------------------------------------------------------
def test_referral_click_is_a_valid_click() -> None:
    event = referral_click(
        event_id="r-1",
        now_ms=NOW,
        visitor="AbCdEfGhIjKlMnOpQrStUv",
        code="JANE20",
        referrer_id="cr-jane",
        query={"utm_source": "instagram", "utm_medium": "social", "utm_campaign": "c" * 300, "other": "x"},
        client=Client("h:" + "b" * 32, "Mozilla/5.0"),
        referer="https://www.instagram.com/p/123?x=1",
        landing_url="https://shop.example/p/1",
    )
    assert validate("clicks", event, NOW) is None
    assert event["referrer_domain"] == "instagram.com"
    assert event["creator_id"] == "cr-jane"
    assert len(event["utm_campaign"]) == 256 and "other" not in event


def test_origins_and_urls() -> None:
    allowed = collector_origins(" https://shop.example , http://127.0.0.1:8000/,")
    assert allowed == ("https://shop.example", "http://127.0.0.1:8000")
    own = "http://collect.example:8090"
    assert origin_allowed("https://shop.example", allowed, own)
    assert origin_allowed("http://collect.example:8090", (), own)  # its own pages
    assert not origin_allowed("https://evil.example", allowed, own)
    assert not origin_allowed("https://shop.example.evil.example", allowed, own)
    assert origin_allowed("https://anyone.example", ("*",), own)
    for bad in ("shop.example", "ftp://shop.example", "https://shop.example/path", "https://shop.example:99999"):
        with pytest.raises(ConfigError):
            collector_origins(bad)
    assert referrer_domain("android-app://com.google") == "com.google"
    assert referrer_domain("not a url") is None and referrer_domain(None) is None
    assert with_param("https://s.example/p?ref=A&ripple_vid=old#top", "ripple_vid", "new") == (
        "https://s.example/p?ref=A&ripple_vid=new#top"
    )
    assert safe_landing("javascript:alert(1)") is None and safe_landing("/relative") is None
    assert safe_landing("https://s.example/") == "https://s.example/"
    assert visitor_id("AbCdEfGhIjKlMnOpQrStUv") == "AbCdEfGhIjKlMnOpQrStUv"
    assert visitor_id("x;y") is None and visitor_id("short") is None and visitor_id(None) is None


# -- settings -----------------------------------------------------------------------------------
def test_collector_settings_from_the_environment(tmp_path: Path) -> None:
    salt_file = tmp_path / "salt"
    salt_file.write_text("s" * 40 + "\n")
    s = load_settings(
        {
            "RIPPLE_COLLECTOR_PORT": "9100",
            "RIPPLE_COLLECTOR_SALT_FILE": str(salt_file),
            "RIPPLE_COLLECTOR_ORIGINS": "https://shop.example",
            "RIPPLE_COLLECTOR_LANDING_URL": "https://shop.example/",
            "RIPPLE_COLLECTOR_RATE": "0",
            "RIPPLE_COLLECTOR_MAX_EVENTS": "100",
        }
    )
    assert (s.collector_port, s.collector_rate, s.collector_max_events) == (9100, 0, 100)
    assert s.collector_salt is not None and s.collector_salt.get() == "s" * 40
    assert "s" * 40 not in repr(s)  # the salt is a secret
    assert load_settings({"RIPPLE_COLLECTOR_PORT": "9100"}, collector_port=9200).collector_port == 9200  # the flag wins


def test_the_producer_is_idempotent_bounded_and_places_keys_with_murmur2() -> None:
    settings = load_settings({}, bootstrap="127.0.0.1:9092")
    config = producer_config("127.0.0.1:9092", settings.kafka, producer_tuning(settings))
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["partitioner"] == "murmur2_random"
    assert config["linger.ms"] == 5 and config["batch.size"] <= 1024 * 1024
    assert config["security.protocol"] == "plaintext"  # KafkaSecurity applies, as to every client


def test_without_a_configured_salt_one_is_made_once_and_kept(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=tmp_path)
    first = load_salt(settings)
    path = tmp_path / "collector-salt"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_salt(settings) == first  # the same after a restart: ip hashes stay comparable
    assert len(first.get()) >= 32
    configured = load_settings({"RIPPLE_COLLECTOR_SALT": "z" * 20}, data_dir=tmp_path / "other")
    assert load_salt(configured).get() == "z" * 20 and not (tmp_path / "other" / "collector-salt").exists()
