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

from ripple import dashboard
from sinks.clickhouse import ClickHouse
from streams.kafka import PLAINTEXT, KafkaSecurity, Secret
from streams.metrics import SinkMetrics
from streams.topics import INPUT_TOPICS

log = logging.getLogger("ripple.web")
STATIC = Path(__file__).resolve().parent / "static"
WORKER_GROUP = "ripple"  # the Faust app id is the worker's consumer group

LEADERBOARD_SQL = """
SELECT
    a.referrer_id AS creator_id,
    any(c.handle) AS handle,
    any(c.tier) AS tier,
    round(sum(a.credit), 2) AS conversions,
    sum(a.revenue_minor) AS revenue_minor,
    sum(a.commission_minor) AS commission_minor,
    any(a.currency) AS currency
FROM ripple.attributions AS a FINAL
LEFT JOIN (SELECT creator_id, handle, tier FROM ripple.creators FINAL) AS c
    ON c.creator_id = a.referrer_id
WHERE a.model = {model:String} AND a.credit > 0
GROUP BY a.referrer_id
ORDER BY revenue_minor DESC
LIMIT {limit:UInt32}
"""

CHAINS_SQL = """
SELECT
    ch.root_id AS root_id,
    coalesce(nullIf(c.handle, ''), ch.root_id) AS name,
    ch.nodes AS nodes,
    ch.depth AS depth,
    ch.k_by_generation AS k_by_generation,
    round(ch.structural_virality, 2) AS structural_virality,
    ch.viral AS viral,
    ch.new_nodes_24h AS new_nodes_24h,
    ch.cascade_revenue_minor AS cascade_revenue_minor
FROM ripple.chains AS ch FINAL
LEFT JOIN (SELECT creator_id, handle FROM ripple.creators FINAL) AS c ON c.creator_id = ch.root_id
WHERE ch.nodes > 1
ORDER BY ch.viral DESC, ch.nodes DESC
LIMIT {limit:UInt32}
"""

TOTALS_SQL = """
SELECT
    (SELECT count() FROM ripple.views FINAL) AS views,
    (SELECT count() FROM ripple.clicks FINAL) AS clicks,
    (SELECT count() FROM ripple.orders FINAL) AS orders,
    (SELECT uniqExact(order_id) FROM ripple.attributions FINAL WHERE credit > 0) AS attributed,
    (SELECT count() FROM ripple.dead_letters FINAL) AS dead_letters,
    (SELECT count() FROM ripple.chain_nodes FINAL WHERE parent_id != '' AND active = 1) AS chain_nodes
"""


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
        rows = await blocking(ch.query_dicts, LEADERBOARD_SQL, {"model": model, "limit": limit})
        return web.json_response(rows)

    async def top_chains(request: web.Request) -> web.Response:
        try:
            limit = max(1, min(100, int(request.query.get("limit", "10"))))
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be an integer") from None
        rows = await blocking(ch.query_dicts, CHAINS_SQL, {"limit": limit})
        return web.json_response(rows)

    async def view(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        model = request.query.get("model", "last_click")
        try:
            body: dict[str, Any] = await blocking(dashboard.query_view, ch, name, model)
        except dashboard.UnknownView:
            raise web.HTTPNotFound(text=f"no view {name!r}; views: {', '.join(dashboard.VIEWS)}") from None
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
        rows = await blocking(ch.query_dicts, TOTALS_SQL)
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
