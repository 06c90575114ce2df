"""The web server of the sink process: ``/`` (dashboard), ``/healthz``, ``/metrics``, ``/api/*``.

In embedded mode the sink owns chDB, so the dashboard's queries run here. With an API token
(``RIPPLE_API_TOKEN``) every path but ``/``, ``/healthz`` and ``/metrics`` answers 401 unless
the request carries ``Authorization: Bearer <token>``; the page itself holds no data and
sends the token it was opened with (``/?token=...``) on its API calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from ripple.web import queries
from sinks.clickhouse import ClickHouse
from streams.kafka import PLAINTEXT, KafkaSecurity, Secret
from streams.metrics import SinkMetrics
from streams.topics import INPUT_TOPICS

log = logging.getLogger("ripple.web")
STATIC = Path(__file__).resolve().parent.parent / "static"
WORKER_GROUP = "ripple"  # the Faust app id is the worker's consumer group


class OffsetMonitor:
    """Committed offsets and lag of a consumer group, per topic (the worker group by default).

    One metadata request, one committed-offsets request and one ListOffsets request per
    call, whatever the number of partitions (a request per partition made each /healthz
    cost the sink ~0.1 s and held its interpreter lock meanwhile)."""

    def __init__(
        self,
        bootstrap: str,
        group: str = WORKER_GROUP,
        topics: tuple[str, ...] = INPUT_TOPICS,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.topics = topics
        common = {"bootstrap.servers": bootstrap, **security.confluent(), "logger": logging.getLogger("ripple.kafka")}
        self.consumer = Consumer({**common, "group.id": group, "enable.auto.commit": False})
        self.admin = AdminClient(common)

    def lag(self) -> dict[str, dict[str, int]]:
        meta = self.consumer.list_topics(timeout=5)
        tps = [TopicPartition(t, p) for t in self.topics if t in meta.topics for p in meta.topics[t].partitions]
        if not tps:
            return {}
        committed = self.consumer.committed(tps, timeout=5)
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        ends = self.admin.list_offsets({tp: latest for tp in tps}, request_timeout=5)
        high = {(tp.topic, tp.partition): future.result().offset for tp, future in ends.items()}
        out: dict[str, dict[str, int]] = {t: {"committed": 0, "lag": 0} for t in dict.fromkeys(tp.topic for tp in tps)}
        for tp in committed:
            pos = tp.offset if tp.offset >= 0 else 0
            out[tp.topic]["committed"] += pos
            out[tp.topic]["lag"] += max(0, high[(tp.topic, tp.partition)] - pos)
        return out

    def close(self) -> None:
        self.consumer.close()


def build_app(
    ch: ClickHouse,
    metrics: SinkMetrics,
    sink_status: Callable[[], dict[str, Any]],
    monitor: OffsetMonitor | None,
    pipeline: list[OffsetMonitor] | None = None,
    sink_written: Callable[[], dict[str, int]] = dict,
    api_token: Secret | None = None,
) -> web.Application:
    app = web.Application(middlewares=[bearer_auth(api_token)] if api_token is not None else [])
    loop_run = asyncio.get_running_loop

    async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
        return await loop_run().run_in_executor(None, fn, *args)

    async def index(_: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def healthz(_: web.Request) -> web.Response:
        body: dict[str, Any] = {"status": "ok", "sink": sink_status()}
        if monitor is not None:
            try:
                body["topics"] = await blocking(monitor.lag)
                # worker-to-worker topics and the sink's own reading: zero lag everywhere
                # means everything sent so far is in ClickHouse
                body["pipeline"] = {}
                for extra in pipeline or ():
                    body["pipeline"].update(await blocking(extra.lag))
            except Exception as exc:  # the broker may be gone while stopping
                body["status"] = "degraded"
                body["error"] = str(exc)
        return web.json_response(body)

    async def prom(_: web.Request) -> web.Response:
        payload, content_type = metrics.render()
        return web.Response(body=payload, content_type=content_type)

    async def leaderboard(request: web.Request) -> web.Response:
        model = request.query.get("model", "last_click")
        try:
            limit = max(1, min(100, int(request.query.get("limit", "20"))))
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be an integer") from None
        rows = await blocking(ch.query_dicts, queries.LEADERBOARD_SQL, {"model": model, "limit": limit})
        return web.json_response(rows)

    async def top_chains(request: web.Request) -> web.Response:
        try:
            limit = max(1, min(100, int(request.query.get("limit", "10"))))
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be an integer") from None
        rows = await blocking(ch.query_dicts, queries.CHAINS_SQL, {"limit": limit})
        return web.json_response(rows)

    async def view(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        model = request.query.get("model", "last_click")
        try:
            body: dict[str, Any] = await blocking(queries.query_view, ch, name, model)
        except queries.UnknownView:
            raise web.HTTPNotFound(text=f"no view {name!r}; views: {', '.join(queries.VIEWS)}") from None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        if name == "pipeline":
            body["sink"] = [{"table": t, "rows": n} for t, n in sorted(sink_written().items())]
            if monitor is not None:
                try:
                    lags = await blocking(monitor.lag)
                    for extra in pipeline or ():
                        lags.update(await blocking(extra.lag))
                    body["lag"] = [{"topic": t, "lag": v["lag"]} for t, v in sorted(lags.items())]
                except Exception as exc:  # the broker may be gone while stopping
                    body["lag_error"] = str(exc)
        return web.json_response(body)

    async def totals(_: web.Request) -> web.Response:
        rows = await blocking(ch.query_dicts, queries.TOTALS_SQL)
        return web.json_response(rows[0] if rows else {})

    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prom)
    app.router.add_get("/api/leaderboard", leaderboard)
    app.router.add_get("/api/totals", totals)
    app.router.add_get("/api/chains", top_chains)
    app.router.add_get("/api/view/{name}", view)
    return app


#: open without a token: the page (static, no data), the health check and Prometheus's scrape target
OPEN_PATHS = frozenset({"/", "/healthz", "/metrics"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_auth(token: Secret) -> Any:
    """Middleware: every path outside :data:`OPEN_PATHS` needs ``Authorization: Bearer <token>``
    (compared in constant time). Unknown paths answer 401 too, so nothing new is open by mistake."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.matches(given.strip()):
            raise web.HTTPUnauthorized(
                text="this API needs the header Authorization: Bearer <RIPPLE_API_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="ripple"'},
            )
        return await handler(request)

    return check


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
