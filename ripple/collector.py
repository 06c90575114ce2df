"""``ripple collect``: the HTTP collector for storefronts (SPEC §8).

* ``POST /v1/events`` — events of any input topic, checked by the workers' validation,
  grouped per topic partition and produced as JSON arrays; 202 once the broker has them.
* ``GET /r/{code}`` — records a click for the code's referrer and redirects (302) to the
  code's landing URL, with the ``ripple_vid`` visitor cookie.
* ``GET /ripple.js`` — the storefront snippet; ``GET /healthz``, ``GET /metrics``.

The pure parts (parsing, validation, grouping, hashing, rate limit) are in
:mod:`ripple.intake`. Here: the producer (confluent-kafka, idempotent, acknowledgements
awaited without blocking the event loop), the reader of the ``codes`` topic, and the
aiohttp handlers. Logs are ``key=value`` lines that never hold an address, a user agent,
a cookie or an event's content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from ripple.config import COLLECTOR_SALT_MIN_LENGTH, ConfigError, Settings, collector_origins
from ripple.intake import (
    TOPICS,
    VISITOR_COOKIE,
    VISITOR_PARAM,
    BodyError,
    Client,
    IpHasher,
    Message,
    TokenBuckets,
    client_address,
    messages,
    origin_allowed,
    parse_body,
    prepare,
    reason,
    referral_click,
    safe_landing,
    visitor_id,
    with_param,
)
from streams.events import decode, message_time, validate
from streams.fraud import FraudConfig, is_bot, load_config
from streams.kafka import Secret, producer_config
from streams.metrics import CollectorMetrics
from streams.producer import Producer, QueueFull
from streams.reference import Code, ReferenceData

log = logging.getLogger("ripple.collector")

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_PORT = 8090
SALT_FILE = "collector-salt"
#: how long a request waits for the broker's acknowledgement before answering 503
ACK_TIMEOUT_S = 15.0
#: how long /r/{code} waits for its click to be acknowledged before redirecting anyway
CLICK_ACK_TIMEOUT_S = 2.0
#: the visitor cookie lives about a year (browsers cap cookies at 400 days)
COOKIE_MAX_AGE = 365 * 86_400
ROUTES = {
    "/v1/events": "events",
    "/r/{code}": "redirect",
    "/ripple.js": "snippet",
    "/healthz": "healthz",
    "/metrics": "metrics",
}


def say(level: int, event: str, **fields: Any) -> None:
    """One ``event=... key=value`` log line."""
    if log.isEnabledFor(level):
        parts = [f"event={event}"] + [f"{k}={_logged(v)}" for k, v in fields.items()]
        log.log(level, " ".join(parts))


def _logged(value: Any) -> str:
    text = str(value)
    return orjson.dumps(text).decode() if not text or any(c in text for c in ' "=\n') else text


class CollectorError(RuntimeError):
    """The collector cannot start (a port in use, no topics); the message is one line."""


# -- the salt of ip_hash ----------------------------------------------------------------
def load_salt(settings: Settings) -> Secret:
    """``RIPPLE_COLLECTOR_SALT``, else the salt kept in ``<data-dir>/collector-salt``,
    created on first use, so hashes stay the same across restarts."""
    if settings.collector_salt is not None:
        return settings.collector_salt
    path = settings.data_dir / SALT_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the collector's salt {path}: {exc.strerror or exc}") from None
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        say(logging.INFO, "salt_created", path=path)
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the collector's salt {path}: {exc}") from None
    if len(value) < COLLECTOR_SALT_MIN_LENGTH or "\n" in value:
        raise ConfigError(f"{path} must hold one line of at least {COLLECTOR_SALT_MIN_LENGTH} characters")
    return Secret(value)


# -- the codes topic ----------------------------------------------------------------------
class CodeBook:
    """Every referral code, read from the compacted ``codes`` topic from its beginning and
    then continuously, in a thread, with the workers' decoding. No consumer group: nothing
    is committed.

    "Caught up" means every partition was read to the end offset the broker reported at
    start; the embedded broker can report less than the true end (see
    ``streams.reference_reader.ReferenceReader._true_ends``), and reading goes on regardless."""

    def __init__(self, settings: Settings) -> None:
        assert settings.bootstrap is not None
        self.data = ReferenceData()
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                **settings.kafka.confluent(),
                "group.id": f"ripple-collector-{secrets.token_hex(4)}",  # required; never joined or committed
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": 200,
                # the embedded broker returns nothing for a batch larger than this
                "max.partition.fetch.bytes": 2 * 1024 * 1024,
                "logger": logging.getLogger("ripple.kafka"),
            }
        )
        self.caught_up = threading.Event()
        self._ends: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector-codes", daemon=True)

    def start(self) -> None:
        meta = self.consumer.list_topics("codes", timeout=10)
        topic = meta.topics.get("codes")
        if topic is None or topic.error is not None or not topic.partitions:
            raise CollectorError("topic codes does not exist: create the topics first (ripple up, worker or sink)")
        parts = sorted(topic.partitions)
        for p in parts:
            _, high = self.consumer.get_watermark_offsets(TopicPartition("codes", p), timeout=10, cached=False)
            if high > 0:
                self._ends[p] = high
        self.consumer.assign([TopicPartition("codes", p, OFFSET_BEGINNING) for p in parts])
        if not self._ends:
            self.caught_up.set()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.consumer.poll(0.2)
            except Exception as exc:  # the consumer is closing
                say(logging.WARNING, "codes_read_failed", error=type(exc).__name__)
                return
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    say(logging.WARNING, "codes_read_error", error=error.str())
                continue
            _, stamp = msg.timestamp()
            good, _ = decode("codes", msg.value(), message_time(stamp, int(time.time() * 1000)))
            for event in good:
                self.data.apply("codes", event)
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None:
                continue
            end = self._ends.get(partition)
            if end is not None and offset + 1 >= end:
                del self._ends[partition]
                if not self._ends:
                    self.caught_up.set()
                    say(logging.INFO, "codes_loaded", codes=len(self.data.codes))

    def lookup(self, code: str, now_ms: int) -> Code | None:
        """The code's record when it is active and not expired at ``now_ms``, else None
        (codes are case-insensitive)."""
        found = self.data.codes.get(code.lower())
        if found is None or not found.active:
            return None
        if found.expires_ts is not None and now_ms >= found.expires_ts:
            return None
        return found

    def __len__(self) -> int:
        return len(self.data.codes)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.consumer.close()


# -- the producer -----------------------------------------------------------------------------
def producer_tuning(settings: Settings) -> dict[str, Any]:
    """The collector's producer tuning, on top of :func:`streams.kafka.producer_config`."""
    # partitions are chosen here (murmur2, as the workers compute them); for any message
    # without one, the producer places it the same way
    return {
        "linger.ms": settings.collector_linger_ms,
        "batch.size": 512 * 1024,
        "delivery.timeout.ms": 10_000,  # a request learns within this that the broker is not there
        "queue.buffering.max.kbytes": 64 * 1024,
        "logger": logging.getLogger("ripple.kafka"),
    }


class Delivery:
    """The collector's :class:`~streams.producer.Producer`, acknowledged per message: each
    message's future ends with its acknowledgement or its error (a failure is the
    request's, answered 503; the process goes on)."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        assert settings.bootstrap is not None
        config = producer_config(settings.bootstrap, settings.kafka, producer_tuning(settings))
        self.producer = Producer(config, "collector-producer")
        self.loop = loop
        self.partitions: dict[str, int] = {}

    def start(self) -> None:
        self.refresh_partitions()
        missing = [t for t in TOPICS.values() if t not in self.partitions]
        if missing:
            raise CollectorError(f"topics {', '.join(missing)} do not exist: create the topics first")

    def refresh_partitions(self) -> None:
        meta = self.producer.client().list_topics(timeout=10)
        for topic in TOPICS.values():
            info = meta.topics.get(topic)
            if info is not None and info.error is None and info.partitions:
                self.partitions[topic] = len(info.partitions)

    async def send(self, message: Message) -> asyncio.Future[None]:
        """Hand one message to the producer; the future ends with its acknowledgement (or
        the producer's error). Waits while the producer's queue is full, for at most the
        acknowledgement timeout."""
        future: asyncio.Future[None] = self.loop.create_future()

        def settle(error: KafkaError | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(error.str()))

        def delivered(error: KafkaError | None, _: Any) -> None:
            self.loop.call_soon_threadsafe(settle, error)

        record = (message.topic, message.value, message.key, message.partition)
        try:
            await self.producer.produce([record], delivered, ACK_TIMEOUT_S)
        except QueueFull:
            future.set_exception(RuntimeError("the producer's queue stayed full"))
        return future

    async def send_all(self, batch: list[Message], timeout: float = ACK_TIMEOUT_S) -> list[Message]:
        """Send every message; return those the broker did not acknowledge in time."""
        futures = [await self.send(m) for m in batch]
        if not futures:
            return []
        done, _ = await asyncio.wait(futures, timeout=timeout)
        failed = [m for m, f in zip(batch, futures, strict=True) if f not in done or f.exception() is not None]
        for m, f in zip(batch, futures, strict=True):
            if f.done() and f.exception() is not None:
                say(logging.WARNING, "delivery_failed", topic=m.topic, partition=m.partition, error=f.exception())
            elif not f.done():
                say(logging.WARNING, "delivery_timeout", topic=m.topic, partition=m.partition)
        return failed

    def queued(self) -> int:
        return self.producer.queued()

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (for at most ``timeout`` seconds); return what was left."""
        return self.producer.close(timeout)


# -- the web application ------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


class Collector:
    def __init__(
        self,
        settings: Settings,
        salt: Secret,
        codes: CodeBook,
        delivery: Delivery,
        metrics: CollectorMetrics | None = None,
        fraud: FraudConfig | None = None,
    ) -> None:
        self.settings = settings
        self.codes = codes
        self.delivery = delivery
        self.metrics = metrics or CollectorMetrics()
        self.fraud = fraud or (load_config(settings.fraud_rules) if settings.fraud_rules else load_config())
        self.hasher = IpHasher(salt)
        self.buckets = TokenBuckets(settings.collector_rate, settings.collector_burst)
        self.origins = collector_origins(settings.collector_origins)
        snippet = (STATIC / "ripple.js").read_text(encoding="utf-8")
        self.snippet = snippet.replace('"__REF_PARAM__"', orjson.dumps(settings.collector_ref_param).decode()).encode()
        for topic in TOPICS.values():  # every series exists from the start, at 0
            self.metrics.accepted.labels(topic)
            self.metrics.messages.labels(topic)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._observe], client_max_size=self.settings.collector_max_body_bytes)
        app.router.add_post("/v1/events", self.events)
        app.router.add_route("OPTIONS", "/v1/events", self.preflight)
        app.router.add_get("/r/{code}", self.redirect)
        app.router.add_get("/ripple.js", self.script)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        return app

    # -- middleware: metrics and the access log ------------------------------------------------
    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = ROUTES.get(resource.canonical, "other") if resource is not None else "other"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(seconds)
            say(logging.DEBUG, "request", method=request.method, route=route, status=status, ms=f"{seconds * 1000:.1f}")

    # -- helpers --------------------------------------------------------------------------------
    def _client(self, request: web.Request) -> tuple[str | None, str | None]:
        """(ip_hash, user agent) of the request's sender; the address itself goes no further."""
        address = client_address(
            request.remote, request.headers.get("X-Forwarded-For"), self.settings.collector_proxies
        )
        return self.hasher(address), request.headers.get("User-Agent")

    def _cors(self, request: web.Request) -> dict[str, str]:
        """CORS headers for an allowed browser origin; 403 for one not on the allowlist.
        Requests without ``Origin`` (servers) need none."""
        origin = request.headers.get("Origin")
        if origin is None:
            return {}
        own = f"{request.scheme}://{request.host}"
        if not origin_allowed(origin, self.origins, own):
            raise web.HTTPForbidden(
                body=orjson.dumps({"error": "this origin may not send events (RIPPLE_COLLECTOR_ORIGINS)"}),
                content_type="application/json",
            )
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def _limited(self, ip_hash: str | None) -> float:
        wait = self.buckets.take(ip_hash or "")
        if wait:
            self.metrics.rate_limited.inc()
        return wait

    # -- handlers ----------------------------------------------------------------------------
    async def preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        headers.update(
            {
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "600",
            }
        )
        return web.Response(status=204, headers=headers)

    async def events(self, request: web.Request) -> web.Response:
        cors = self._cors(request)
        ip_hash, user_agent = self._client(request)
        wait = self._limited(ip_hash)
        if wait:
            retry = str(max(1, math.ceil(wait)))
            return _json({"error": "rate limited: send again later"}, 429, {**cors, "Retry-After": retry})
        limit = self.settings.collector_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _json({"error": f"body of {request.content_length} bytes is over the limit of {limit}"}, 413, cors)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json({"error": f"body is over the limit of {limit} bytes"}, 413, cors)
        try:
            items = parse_body(raw, self.settings.collector_max_events)
        except BodyError as exc:
            return _json({"error": str(exc)}, exc.status, cors)
        # a browser's request (it sends Origin) speaks for the visitor: its address and user
        # agent complete the events; a server's request (a shop's backend) does not
        client = Client(ip_hash, user_agent) if "Origin" in request.headers else None
        prepared = prepare(items, int(time.time() * 1000), self.settings.max_future_ms, client)
        batch = messages(prepared.accepted, self.delivery.partitions)
        started = time.perf_counter()
        failed = await self.delivery.send_all(batch)
        if batch:
            self.metrics.produce_seconds.observe(time.perf_counter() - started)
        rejected = sorted(prepared.rejected)
        for _, error in rejected:
            self.metrics.rejected.labels(reason(error)).inc()
        lost = {i for m in failed for i in m.indexes}
        unacknowledged = {id(m) for m in failed}
        for m in batch:
            if id(m) not in unacknowledged:
                self.metrics.messages.labels(m.topic).inc()
                self.metrics.accepted.labels(m.topic).inc(len(m.indexes))
        accepted = len(prepared.accepted) - len(lost)
        body: dict[str, Any] = {"accepted": accepted, "rejected": [{"index": i, "error": e} for i, e in rejected]}
        if rejected:
            say(logging.INFO, "events_rejected", events=len(items), rejected=len(rejected))
        if lost:
            self.metrics.rejected.labels("delivery").inc(len(lost))
            body["error"] = "the broker did not acknowledge some events: send them again (their event ids keep it safe)"
            body["unacknowledged"] = sorted(lost)
            return _json(body, 503, {**cors, "Retry-After": "5"})
        return _json(body, 202, cors)

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        code = request.match_info["code"]
        now_ms = int(time.time() * 1000)
        visitor = visitor_id(request.cookies.get(VISITOR_COOKIE)) or secrets.token_urlsafe(16)
        found = self.codes.lookup(code, now_ms) if len(code) <= 128 else None
        target = safe_landing(found.landing_url if found else None) or self.settings.collector_landing_url
        if found is None:
            self.metrics.clicks.labels("unknown").inc()
        else:
            await self._record_click(request, code, found, visitor, now_ms, target)
        if target is None:
            response: web.StreamResponse = web.Response(
                status=404, text="unknown referral link (and no RIPPLE_COLLECTOR_LANDING_URL to send you to)\n"
            )
        else:
            response = web.Response(status=302, headers={"Location": with_param(target, VISITOR_PARAM, visitor)})
        response.headers["Cache-Control"] = "no-store"
        response.set_cookie(
            VISITOR_COOKIE,
            visitor,
            max_age=COOKIE_MAX_AGE,
            path="/",
            samesite="Lax",
            secure=request.secure,
        )
        return response

    async def _record_click(
        self, request: web.Request, code: str, found: Code, visitor: str, now_ms: int, target: str | None
    ) -> None:
        ip_hash, user_agent = self._client(request)
        if self._limited(ip_hash):
            self.metrics.clicks.labels("rate_limited").inc()
            return
        click = referral_click(
            event_id=f"r-{secrets.token_urlsafe(12)}",
            now_ms=now_ms,
            visitor=visitor,
            code=code,
            referrer_id=found.referrer_id if found.referrer_type == "creator" else None,
            query=request.query,
            client=Client(ip_hash, user_agent),
            referer=request.headers.get("Referer"),
            landing_url=target,
        )
        error = validate("clicks", click, now_ms, self.settings.max_future_ms)
        if error is not None:
            self.metrics.rejected.labels(reason(error)).inc()
            say(logging.INFO, "click_rejected", reason=reason(error))
            return
        failed = await self.delivery.send_all(
            messages([(0, "clicks", click)], self.delivery.partitions), CLICK_ACK_TIMEOUT_S
        )
        if failed:
            self.metrics.clicks.labels("failed").inc()
            self.metrics.rejected.labels("delivery").inc()
            return
        self.metrics.messages.labels("clicks").inc()
        self.metrics.accepted.labels("clicks").inc()
        # a bot's click is recorded with its user agent: the workers' bot_click rule denies
        # it credit and counts it; here it is counted apart
        self.metrics.clicks.labels("bot" if is_bot(user_agent, self.fraud) else "recorded").inc()

    async def script(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self.snippet,
            content_type="application/javascript",
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    async def healthz(self, _: web.Request) -> web.Response:
        self.metrics.codes.set(len(self.codes))
        return _json(
            {
                "status": "ok",
                "codes": len(self.codes),
                "codes_caught_up": self.codes.caught_up.is_set(),
                "partitions": self.delivery.partitions,
                "producer_queue": self.delivery.queued(),
            },
            200,
        )

    async def prometheus(self, _: web.Request) -> web.Response:
        self.metrics.codes.set(len(self.codes))
        payload, content_type = self.metrics.render()
        return web.Response(body=payload, content_type=content_type)


# -- the process --------------------------------------------------------------------------------
async def run_collector(settings: Settings, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then stop taking requests and deliver what is queued."""
    loop = asyncio.get_running_loop()
    salt = load_salt(settings)
    codes = CodeBook(settings)
    delivery = Delivery(settings, loop)
    runner: web.AppRunner | None = None
    try:
        await loop.run_in_executor(None, codes.start)
        await loop.run_in_executor(None, delivery.start)
        # serve once the codes known at start are read, so no link of a known code is missed
        await loop.run_in_executor(None, codes.caught_up.wait, 15.0)
        collector = Collector(settings, salt, codes, delivery)
        runner = web.AppRunner(collector.app(), access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.collector_host, port).start()
        except OSError as exc:
            raise CollectorError(f"cannot listen on {settings.collector_host}:{port}: {exc.strerror or exc}") from None
        if settings.collector_landing_url is None:
            say(logging.WARNING, "no_default_landing_url", effect="unknown codes and codes without landing_url: 404")
        say(
            logging.INFO,
            "listening",
            host=settings.collector_host,
            port=port,
            codes=len(codes),
            partitions=",".join(f"{t}:{n}" for t, n in sorted(delivery.partitions.items())),
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        refreshed = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            if time.monotonic() - refreshed > 60:  # a topic given more partitions
                refreshed = time.monotonic()
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(None, delivery.refresh_partitions)
    finally:
        if runner is not None:
            await runner.cleanup()
        left = await loop.run_in_executor(None, delivery.close, 10.0)
        await loop.run_in_executor(None, codes.close)
        say(logging.INFO, "stopped", undelivered=left)
