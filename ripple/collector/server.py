"""The collector's aiohttp application (its handlers) and the process that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ripple.checks import collector_origins
from ripple.collector.base import CLICK_ACK_TIMEOUT_S, COOKIE_MAX_AGE, ROUTES, STATIC, CollectorError, load_salt, say
from ripple.collector.intake import (
    TOPICS,
    VISITOR_COOKIE,
    VISITOR_PARAM,
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
    safe_landing,
    visitor_id,
    with_param,
)
from ripple.collector.kafka import Delivery, read_codes
from ripple.config import Settings
from streams.events import validate
from streams.fraud import FraudConfig, is_bot, load_config
from streams.kafka import Secret
from streams.metrics import CollectorMetrics
from streams.reference import Code
from streams.reference_reader import ReferenceReader

# -- the web application ------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


class Collector:
    def __init__(
        self,
        settings: Settings,
        salt: Secret,
        codes: ReferenceReader,
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
        found = self.codes.data.active_code(code, now_ms) if len(code) <= 128 else None
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
            secure=self._behind_tls(request),
            httponly=True,  # read by this server only: the snippet keeps its own on the shop's domain
        )
        return response

    def _behind_tls(self, request: web.Request) -> bool:
        """Whether the visitor reached us over HTTPS: here, or at the trusted proxy in front
        (its ``X-Forwarded-Proto``), where TLS usually ends."""
        proxies = self.settings.collector_proxies
        if request.secure or proxies <= 0:
            return request.secure
        forwarded = request.headers.get("X-Forwarded-Proto", "")
        return forwarded_by_proxy(forwarded, proxies).lower() == "https"

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
        self.metrics.codes.set(len(self.codes.data.codes))
        return _json(
            {
                "status": "ok",
                "codes": len(self.codes.data.codes),
                "codes_caught_up": self.codes.is_ready(),
                "partitions": self.delivery.partitions,
                "producer_queue": self.delivery.queued(),
            },
            200,
        )

    async def prometheus(self, _: web.Request) -> web.Response:
        self.metrics.codes.set(len(self.codes.data.codes))
        payload, content_type = self.metrics.render()
        return web.Response(body=payload, content_type=content_type)


# -- the process --------------------------------------------------------------------------------
async def run_collector(settings: Settings, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then stop taking requests and deliver what is queued."""
    loop = asyncio.get_running_loop()
    salt = load_salt(settings)
    delivery = Delivery(settings, loop)
    codes: ReferenceReader | None = None
    runner: web.AppRunner | None = None
    try:
        # serve once the codes known at start are read, so no link of a known code is missed
        codes = await read_codes(settings)
        await loop.run_in_executor(None, delivery.start)
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
            codes=len(codes.data.codes),
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
        if codes is not None:
            await codes.stop()
        say(logging.INFO, "stopped", undelivered=left)
