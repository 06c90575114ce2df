"""``ripple collect`` as a process against the real embedded broker: what storefronts get
back (202, 400, 413, 429, 403, 302) and what lands in Kafka (per-partition JSON arrays,
hashed addresses, referral clicks), read back with a Kafka consumer."""

from __future__ import annotations

import http.client
import itertools
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from stack import get, kill_all, spawn, wait_for

from ripple.broker import EmbeddedBroker, create_topics, free_port
from ripple.collector.intake import IpHasher, topic_key
from streams.fraud import is_bot, load_config
from streams.kafka import Secret
from streams.partitioner import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
SALT = "collector-test-salt-0123456789"
SHOP = "http://shop.test"
DEFAULT_LANDING = "https://shop.test/home"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
CLIENT_IP = "203.0.113.77"
NOW = int(time.time() * 1000)
CODES = [
    {"code": "JANE20", "referrer_id": "cr-jane", "referrer_type": "creator", "issued_ts": NOW - 86_400_000,
     "landing_url": "https://shop.test/jane?ref=JANE20"},
    {"code": "FRIEND9", "referrer_id": "cu-9", "referrer_type": "customer", "issued_ts": NOW - 86_400_000},
    {"code": "OLD", "referrer_id": "cr-old", "referrer_type": "creator", "issued_ts": NOW - 86_400_000,
     "active": False, "landing_url": "https://shop.test/old"},
    {"code": "GONE", "referrer_id": "cr-gone", "referrer_type": "creator", "issued_ts": NOW - 86_400_000,
     "expires_ts": NOW - 1000, "landing_url": "https://shop.test/gone"},
]  # fmt: skip
_ips = (f"198.51.100.{i}" for i in itertools.count(1))


@dataclass
class Collector:
    url: str
    port: int
    bootstrap: str
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    tmp = tmp_path_factory.mktemp("collector")
    broker = EmbeddedBroker(tmp / "broker.log")
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        create_topics(broker.bootstrap, PARTITIONS)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
        for code in CODES:
            producer.produce("codes", key=code["code"].lower().encode(), value=orjson.dumps(code))
        assert producer.flush(10) == 0
        port = free_port()
        log = tmp / "collect.log"
        proc = spawn(
            *("collect", "--bootstrap", broker.bootstrap, "--port", str(port), "--data-dir", str(tmp / "data")),
            log=log,
            env={
                "RIPPLE_COLLECTOR_SALT": SALT,
                "RIPPLE_COLLECTOR_ORIGINS": SHOP,
                "RIPPLE_COLLECTOR_LANDING_URL": DEFAULT_LANDING,
                "RIPPLE_COLLECTOR_PROXIES": "1",  # the tests speak for clients through X-Forwarded-For
                "RIPPLE_COLLECTOR_RATE": "5",
                "RIPPLE_COLLECTOR_BURST": "10",
                "RIPPLE_COLLECTOR_MAX_BODY_BYTES": str(256 * 1024),
                "RIPPLE_LOG_LEVEL": "debug",  # every line it can write, checked for personal data
            },
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(f"{url}/healthz")["codes"] == len(CODES), 60, "the collector to read the codes")
        yield Collector(url, port, broker.bootstrap, proc, log)
    finally:
        kill_all(procs)
        broker.stop()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def call(
    c: Collector, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    """One request from a fresh client address (unless ``headers`` gives one)."""
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"X-Forwarded-For": next(_ips), **(headers or {})})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def post(c: Collector, events: Any, headers: dict[str, str] | None = None) -> Answer:
    body = events if isinstance(events, bytes) else orjson.dumps(events)
    return call(c, "POST", "/v1/events", body, headers)


def read_topic(bootstrap: str, topic: str, done: Callable[[list[tuple[int, list[Any]]]], bool]) -> list[Any]:
    """(partition, events) of every message of ``topic``, read until ``done`` says enough."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "max.partition.fetch.bytes": 2 * 1024 * 1024,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        got: list[tuple[int, list[Any]]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not done(got):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                value = orjson.loads(msg.value())
                got.append((msg.partition(), value if isinstance(value, list) else [value]))
        assert done(got), f"not found in {topic} after 30 s"
        return got
    finally:
        consumer.close()


def events_of(messages: list[Any]) -> list[dict[str, Any]]:
    return [e for _, events in messages for e in events]


def has(ids: set[str]) -> Callable[[list[Any]], bool]:
    return lambda got: ids <= {e["event_id"] for e in events_of(got)}


def view(event_id: str, visitor: str) -> dict[str, Any]:
    return {"type": "view", "event_id": event_id, "ts": NOW, "creator_id": "cr-jane", "content_id": "p-1",
            "visitor_id": visitor}  # fmt: skip


def click(event_id: str, visitor: str, **extra: Any) -> dict[str, Any]:
    return {"type": "click", "event_id": event_id, "ts": NOW, "visitor_id": visitor, "ref": "JANE20", **extra}


def metric(c: Collector, line_start: str) -> float:
    text = call(c, "GET", "/metrics").body.decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


# -- POST /v1/events ------------------------------------------------------------------------------
def test_500_events_become_a_few_messages_in_the_partitions_the_workers_read(collector: Collector) -> None:
    sent = [view(f"b500-{i}", f"vis-{i % 60}") for i in range(500)]
    before = metric(collector, 'ripple_collector_messages_total{topic="views"}')
    answer = post(collector, b"\n".join(orjson.dumps(e) for e in sent) + b"\n")  # NDJSON
    assert answer.status == 202, answer.body
    assert answer.json() == {"accepted": 500, "rejected": []}
    ids = {e["event_id"] for e in sent}
    got = [
        (p, [e for e in events if e["event_id"] in ids])
        for p, events in read_topic(collector.bootstrap, "views", has(ids))
    ]
    ours = [(p, events) for p, events in got if events]
    assert len(ours) <= PARTITIONS  # one JSON array per partition: 500 events, at most 4 messages
    assert metric(collector, 'ripple_collector_messages_total{topic="views"}') - before == len(ours)
    for partition, events in ours:
        for event in events:
            assert partition == partition_for(topic_key("views", event).encode(), PARTITIONS)
            assert "type" not in event
    assert sorted(e["event_id"] for e in events_of(ours)) == sorted(ids)


def test_rejections_are_listed_by_index_and_the_rest_is_accepted(collector: Collector) -> None:
    answer = post(
        collector,
        [
            view("mix-1", "vis-mix"),
            {"type": "purchase", "event_id": "mix-2"},
            click("mix-3", "vis-mix", ip_hash="203.0.113.5"),  # a raw address: never stored
            {**view("mix-4", "vis-mix"), "ts": "yesterday"},
            "not an event",
            {"type": "refund", "event_id": "mix-6", "ts": NOW, "order_id": "o-mix", "amount_minor": 250},
        ],
    )
    assert answer.status == 202
    body = answer.json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1, 2, 3, 4]
    errors = [r["error"] for r in body["rejected"]]
    assert "type is unknown" in errors[0]
    assert "ip_hash looks like a raw IP address" in errors[1] and "203.0.113.5" not in errors[1]
    assert errors[2].startswith("schema:") and "ts" in errors[2]
    assert "must be a JSON object" in errors[3]
    read_topic(collector.bootstrap, "refunds", has({"mix-6"}))


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b"{not json", 400, "not JSON"),
        (b"", 400, "empty body"),
        (b'"a string"', 400, "must be a JSON object"),
        (b'{"type": "view"}\n{"type": oops}\n', 400, "line 2"),
        (b"[" + b",".join([b"{}"] * 1001) + b"]", 413, "over the limit of 1000"),
        (b'[{"type": "view", "pad": "' + b"x" * 300_000 + b'"}]', 413, "over the limit"),
    ],
    ids=["malformed", "empty", "scalar", "ndjson line", "too many events", "too large"],
)
def test_bodies_that_cannot_be_read_get_a_clear_4xx(
    collector: Collector, body: bytes, status: int, needle: str
) -> None:
    answer = post(collector, body)
    assert answer.status == status
    assert answer.headers["Content-Type"].startswith("application/json")
    assert needle in answer.json()["error"]


def test_a_body_sent_in_chunks_over_the_limit_is_refused(collector: Collector) -> None:
    """No Content-Length to check first: the limit holds while reading."""
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/events")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("X-Forwarded-For", next(_ips))
        conn.endheaders()
        for _ in range(40):
            chunk = b"x" * 8192
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        assert resp.status == 413
    finally:
        conn.close()


# -- browsers: CORS, address and user agent -------------------------------------------------------
def test_cors_allowlist(collector: Collector) -> None:
    pre = call(collector, "OPTIONS", "/v1/events", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"})
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    evil = "https://evil.example"
    assert call(collector, "OPTIONS", "/v1/events", headers={"Origin": evil}).status == 403
    refused = post(collector, [view("cors-evil", "vis-cors")], {"Origin": evil})
    assert refused.status == 403 and "Access-Control-Allow-Origin" not in refused.headers
    allowed = post(collector, [view("cors-shop", "vis-cors")], {"Origin": SHOP})
    assert allowed.status == 202 and allowed.headers["Access-Control-Allow-Origin"] == SHOP
    views = events_of(read_topic(collector.bootstrap, "views", has({"cors-shop"})))
    assert "cors-evil" not in {e["event_id"] for e in views}


def test_a_browser_s_events_get_its_hashed_address_and_user_agent(collector: Collector) -> None:
    browser = {"Origin": SHOP, "X-Forwarded-For": CLIENT_IP, "User-Agent": BROWSER_UA, "Content-Type": "text/plain"}
    assert post(collector, [click("enrich-browser", "vis-enrich")], browser).json()["accepted"] == 1
    # a shop's server (no Origin) speaks for itself, not for the customer: nothing is added
    assert post(collector, [click("enrich-server", "vis-enrich")], {"User-Agent": "shop-backend/1"}).status == 202
    clicks = {
        e["event_id"]: e
        for e in events_of(read_topic(collector.bootstrap, "clicks", has({"enrich-browser", "enrich-server"})))
    }
    expected = IpHasher(Secret(SALT))(CLIENT_IP)
    assert clicks["enrich-browser"]["ip_hash"] == expected
    assert clicks["enrich-browser"]["user_agent"] == BROWSER_UA
    assert "ip_hash" not in clicks["enrich-server"] and "user_agent" not in clicks["enrich-server"]


def test_rate_limit_per_client(collector: Collector) -> None:
    ip = {"X-Forwarded-For": "198.51.100.250"}
    answers = [post(collector, [view(f"rl-{i}", "vis-rl")], ip) for i in range(30)]
    limited = [a for a in answers if a.status == 429]
    assert limited, [a.status for a in answers]
    assert sum(a.status == 202 for a in answers) >= 10  # the burst
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert "rate limited" in limited[0].json()["error"]
    assert post(collector, [view("rl-other", "vis-rl")]).status == 202  # another client is not limited
    assert metric(collector, "ripple_collector_rate_limited_total") >= len(limited)


# -- GET /r/{code} -------------------------------------------------------------------------------------
def follow(c: Collector, path: str, headers: dict[str, str] | None = None) -> tuple[str, str, Answer]:
    """(redirect target without the visitor parameter, visitor id, answer) of a referral link."""
    answer = call(c, "GET", path, headers={"User-Agent": BROWSER_UA, **(headers or {})})
    assert answer.status == 302, answer.body
    location = answer.headers["Location"]
    parts = urlsplit(location)
    query = parse_qs(parts.query)
    [visitor] = query.pop("ripple_vid")
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"ripple_vid={visitor};") and "SameSite=Lax" in cookie and "Max-Age=" in cookie
    # only this server reads it (the snippet keeps its own on the shop's domain); Secure
    # when the visitor came over HTTPS to the trusted proxy in front
    assert "HttpOnly" in cookie
    assert ("Secure" in cookie) == ((headers or {}).get("X-Forwarded-Proto") == "https")
    rest = "&".join(f"{k}={v[0]}" for k, v in query.items())
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else ""), visitor, answer


def test_the_visitor_cookie_is_secure_behind_the_tls_proxy(collector: Collector) -> None:
    follow(collector, "/r/JANE20", {"X-Forwarded-Proto": "https"})  # asserts Secure
    follow(collector, "/r/JANE20", {"X-Forwarded-Proto": "http"})  # asserts not Secure


def test_a_referral_link_records_a_click_and_redirects_to_the_landing_page(collector: Collector) -> None:
    target, visitor, _ = follow(
        collector,
        "/r/jane20?utm_source=instagram&utm_medium=social&utm_campaign=spring",
        {"Referer": "https://www.instagram.com/p/xyz", "X-Forwarded-For": CLIENT_IP},
    )
    assert target == "https://shop.test/jane?ref=JANE20"
    # the same visitor comes back: the cookie is read, not replaced
    _, again, _ = follow(collector, "/r/JANE20", {"Cookie": f"ripple_vid={visitor}"})
    assert again == visitor
    got = read_topic(
        collector.bootstrap, "clicks", lambda g: sum(e["visitor_id"] == visitor for e in events_of(g)) >= 2
    )
    first, second = [e for e in events_of(got) if e["visitor_id"] == visitor]
    assert first["ref"] == "jane20" and first["creator_id"] == "cr-jane"
    assert (first["utm_source"], first["utm_medium"], first["utm_campaign"]) == ("instagram", "social", "spring")
    assert first["referrer_domain"] == "instagram.com"
    assert first["ip_hash"] == IpHasher(Secret(SALT))(CLIENT_IP)
    assert first["user_agent"] == BROWSER_UA
    assert first["landing_url"] == "https://shop.test/jane?ref=JANE20"
    assert second["ref"] == "JANE20" and first["event_id"] != second["event_id"]
    for partition, events in got:
        for event in events:
            assert partition == partition_for(event["visitor_id"].encode(), PARTITIONS)


def test_unknown_inactive_and_expired_codes_go_to_the_default_without_a_click(collector: Collector) -> None:
    for code in ("NOPE", "old", "GONE"):
        target, _, _ = follow(collector, f"/r/{code}")
        assert target == DEFAULT_LANDING
    # a code without a landing URL of its own: the default page, and the click is recorded
    target, visitor, _ = follow(collector, "/r/friend9")
    assert target == DEFAULT_LANDING
    clicks = events_of(
        read_topic(collector.bootstrap, "clicks", lambda g: visitor in {e["visitor_id"] for e in events_of(g)})
    )
    assert not {e["ref"].upper() for e in clicks} & {"NOPE", "OLD", "GONE"}
    [friend] = [e for e in clicks if e["visitor_id"] == visitor]
    assert friend["ref"] == "friend9" and "creator_id" not in friend  # a customer's code


def test_bots_are_redirected_and_flagged(collector: Collector) -> None:
    bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    before = metric(collector, 'ripple_collector_referral_clicks_total{outcome="bot"}')
    target, visitor, _ = follow(collector, "/r/JANE20", {"User-Agent": bot})
    assert target == "https://shop.test/jane?ref=JANE20"
    assert metric(collector, 'ripple_collector_referral_clicks_total{outcome="bot"}') == before + 1
    # recorded with its user agent: the workers' bot_click rule denies it credit
    clicks = events_of(
        read_topic(collector.bootstrap, "clicks", lambda g: visitor in {e["visitor_id"] for e in events_of(g)})
    )
    [flagged] = [e for e in clicks if e["visitor_id"] == visitor]
    assert flagged["user_agent"] == bot and is_bot(flagged["user_agent"], load_config())


# -- snippet, health, metrics, logs, stop -----------------------------------------------------------------
def test_the_snippet_is_served(collector: Collector) -> None:
    answer = call(collector, "GET", "/ripple.js")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/javascript")
    assert len(answer.body) < 8 * 1024  # small, no dependencies
    text = answer.body.decode()
    assert "ripple_vid" in text and "sendBeacon" in text and "__REF_PARAM__" not in text
    assert '|| "ref"' in text  # the configured parameter


def test_health_and_metrics(collector: Collector) -> None:
    health = get(f"{collector.url}/healthz")
    assert health["status"] == "ok" and health["codes"] == len(CODES) and health["codes_caught_up"]
    assert health["partitions"] == {
        "views": PARTITIONS,
        "clicks": PARTITIONS,
        "orders": PARTITIONS,
        "refunds": PARTITIONS,
    }
    assert metric(collector, 'ripple_collector_events_accepted_total{topic="views"}') >= 500
    assert metric(collector, 'ripple_collector_events_rejected_total{reason="schema"}') >= 1
    assert metric(collector, 'ripple_collector_events_rejected_total{reason="raw_identity"}') >= 1
    assert metric(collector, "ripple_collector_produce_seconds_count") >= 1
    assert metric(collector, 'ripple_collector_requests_total{route="events",status="413"}') >= 1
    assert metric(collector, 'ripple_collector_referral_clicks_total{outcome="unknown"}') >= 3


def test_zz_a_clean_stop_and_logs_without_personal_data(collector: Collector) -> None:
    collector.proc.send_signal(signal.SIGTERM)
    assert collector.proc.wait(15) == 0
    log = collector.log.read_text()
    assert "event=request method=POST route=events status=202" in log  # debug: every request
    assert "event=stopped undelivered=0" in log
    for personal in (CLIENT_IP, "198.51.100.", "203.0.113.5", BROWSER_UA, "Googlebot", "instagram", SALT):
        assert personal not in log, personal
    assert "Traceback" not in log
