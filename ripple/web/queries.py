"""Every read-side query of the web server, in one place: the API's leaderboard, chains and
totals, and the built-in dashboard's five views (``GET /api/view/{name}?model=last_click``
runs a view's queries and returns ``{query name: rows}``). The views ask the same questions
as the Grafana dashboards in ``deploy/grafana/``, for the embedded mode where there is no
Grafana; :mod:`ripple.web.grafana` renders those dashboards' SQL, so both can be run and
compared. Values reach ClickHouse only as query parameters."""

from __future__ import annotations

from typing import Any

from sinks.clickhouse import ClickHouse
from streams.models import MODELS

LEADERBOARD_SQL = """
SELECT
    d.creator_id AS creator_id,
    any(c.handle) AS handle,
    any(c.tier) AS tier,
    round(sum(d.conversions), 2) AS conversions,
    toInt64(sum(d.revenue_minor)) AS revenue_minor,
    toInt64(round(sum(d.commission_minor))) AS commission_minor,
    any(d.currency) AS currency
FROM ripple.creator_daily AS d
LEFT JOIN (SELECT creator_id, handle, tier FROM ripple.creators FINAL) AS c
    ON c.creator_id = d.creator_id
WHERE d.model = {model:String}
GROUP BY d.creator_id
HAVING conversions > 0
ORDER BY revenue_minor DESC, creator_id
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


VIEWS: dict[str, dict[str, str]] = {
    "creators": {
        "leaderboard": """
            SELECT d.creator_id AS creator_id, any(c.handle) AS handle, any(c.tier) AS tier,
                   sum(d.views) AS views, sum(d.clicks) AS clicks, round(sum(d.conversions), 2) AS conversions,
                   sum(d.revenue_minor) AS revenue_minor, round(sum(d.commission_minor)) AS commission_minor,
                   round(sum(d.clicks) / nullIf(sum(d.views), 0), 4) AS ctr,
                   round(sum(d.conversions) / nullIf(sum(d.unique_clickers), 0), 4) AS cr,
                   round(sum(d.revenue_minor) / nullIf(sum(d.conversions), 0)) AS aov_minor,
                   round(sum(d.commission_minor) / nullIf(sum(d.clicks), 0)) AS epc_minor,
                   round((sum(d.revenue_minor) - sum(d.refunds_minor) - sum(d.commission_minor)
                          - sum(d.discount_minor) - sum(d.flat_fees_minor))
                         / nullIf(sum(d.commission_minor) + sum(d.discount_minor) + sum(d.flat_fees_minor), 0), 2)
                       AS roi,
                   round(sumIf(d.ltv_90d_minor * d.new_customers, d.ltv_90d_minor IS NOT NULL)
                         / nullIf(sumIf(d.new_customers, d.ltv_90d_minor IS NOT NULL), 0)) AS ltv_90d_minor
            FROM ripple.creator_daily AS d
            LEFT JOIN (SELECT creator_id, handle, tier FROM ripple.creators FINAL) AS c
                ON c.creator_id = d.creator_id
            WHERE d.model = {model:String}
            GROUP BY d.creator_id
            ORDER BY revenue_minor DESC
            LIMIT 15""",
        "funnel": """
            SELECT (SELECT count() FROM ripple.views FINAL) AS views,
                   (SELECT count() FROM ripple.clicks FINAL) AS clicks,
                   (SELECT count() FROM ripple.orders FINAL) AS orders,
                   (SELECT uniqExact(order_id) FROM ripple.attributions FINAL
                    WHERE model = {model:String} AND credit > 0) AS attributed""",
        "tiers": """
            SELECT c.tier AS tier, sum(d.views) AS views, sum(d.clicks) AS clicks,
                   round(sum(d.conversions), 1) AS conversions, sum(d.revenue_minor) AS revenue_minor,
                   round(sum(d.clicks) / nullIf(sum(d.views), 0), 4) AS ctr,
                   round(sum(d.conversions) / nullIf(sum(d.unique_clickers), 0), 4) AS cr,
                   round(sum(d.revenue_minor) / nullIf(sum(d.conversions), 0)) AS aov_minor
            FROM ripple.creator_daily AS d
            INNER JOIN (SELECT creator_id, tier FROM ripple.creators FINAL) AS c ON c.creator_id = d.creator_id
            WHERE d.model = {model:String}
            GROUP BY c.tier
            ORDER BY revenue_minor DESC""",
        "daily": """
            SELECT toString(d.day) AS day, sum(d.revenue_minor) AS revenue_minor,
                   round(sum(d.conversions), 1) AS credited
            FROM ripple.creator_daily AS d
            WHERE d.model = {model:String} AND d.conversions > 0
            GROUP BY d.day
            ORDER BY day DESC
            LIMIT 60""",
    },
    "attribution": {
        "models": """
            SELECT model, round(sum(credit), 1) AS conversions, sum(revenue_minor) AS revenue_minor,
                   sum(commission_minor) AS commission_minor, uniqExact(referrer_id) AS referrers
            FROM ripple.attributions FINAL
            WHERE credit > 0
            GROUP BY model
            ORDER BY model""",
        "touch_types": """
            SELECT model, touch_type, round(sum(credit), 1) AS conversions
            FROM ripple.attributions FINAL
            WHERE credit > 0
            GROUP BY model, touch_type
            ORDER BY model, touch_type""",
        "view_through": """
            SELECT round(sumIf(credit, touch_type = 'view') / nullIf(sum(credit), 0), 4) AS share,
                   round(sumIf(credit, touch_type = 'code') / nullIf(sum(credit), 0), 4) AS code_share
            FROM ripple.attributions FINAL
            WHERE model = {model:String} AND credit > 0""",
        "conflicts": """
            SELECT winner, count() AS conflicts
            FROM ripple.conflicts FINAL
            WHERE active = 1
            GROUP BY winner
            ORDER BY conflicts DESC""",
    },
    "chains": {
        "top": """
            SELECT ch.root_id AS root_id, coalesce(nullIf(c.handle, ''), ch.root_id) AS name, ch.nodes AS nodes,
                   ch.depth AS depth, ch.k_by_generation AS k_by_generation,
                   round(ch.structural_virality, 2) AS structural_virality, ch.viral AS viral,
                   ch.new_nodes_24h AS new_nodes_24h, ch.cascade_revenue_minor AS cascade_revenue_minor
            FROM ripple.chains AS ch FINAL
            LEFT JOIN (SELECT creator_id, handle FROM ripple.creators FINAL) AS c ON c.creator_id = ch.root_id
            WHERE ch.nodes > 1
            ORDER BY ch.viral DESC, ch.nodes DESC
            LIMIT 10""",
        "growth": """
            SELECT toString(toDate(ts)) AS day, count() AS nodes
            FROM ripple.chain_nodes FINAL
            WHERE active = 1 AND parent_id != ''
            GROUP BY day
            ORDER BY day DESC
            LIMIT 60""",
        "summary": """
            SELECT count() AS chains, countIf(viral = 1) AS viral, sum(nodes) AS nodes, max(depth) AS depth
            FROM ripple.chains FINAL""",
    },
    "fraud": {
        "by_rule": """
            SELECT rule, count() AS alerts, countIf(severity IN ('high', 'critical')) AS high
            FROM ripple.alerts FINAL
            GROUP BY rule
            ORDER BY alerts DESC""",
        "by_day": """
            SELECT toString(toDate(ts)) AS day, count() AS alerts
            FROM ripple.alerts FINAL
            WHERE severity != 'info'
            GROUP BY day
            ORDER BY day DESC
            LIMIT 60""",
        "blocked": """
            SELECT reasons[1] AS reason, count() AS orders, sum(revenue_minor) AS revenue_minor
            FROM ripple.attributions FINAL
            WHERE model = {model:String} AND status = 'blocked' AND credit > 0
            GROUP BY reason
            ORDER BY orders DESC""",
        "leaked_codes": """
            SELECT code, count() AS alerts, toString(max(ts)) AS last_seen
            FROM ripple.alerts FINAL
            WHERE rule = 'code_leakage'
            GROUP BY code
            ORDER BY alerts DESC
            LIMIT 10""",
        "latest": """
            SELECT toString(ts) AS ts, rule, severity, referrer_id, code, substring(evidence, 1, 160) AS evidence
            FROM ripple.alerts FINAL
            WHERE severity != 'info'
            ORDER BY ts DESC
            LIMIT 12""",
    },
    "pipeline": {
        "stored": """
            SELECT 'views' AS table, count() AS rows FROM ripple.views FINAL
            UNION ALL SELECT 'clicks', count() FROM ripple.clicks FINAL
            UNION ALL SELECT 'orders', count() FROM ripple.orders FINAL
            UNION ALL SELECT 'refunds', count() FROM ripple.refunds FINAL
            UNION ALL SELECT 'attributions', count() FROM ripple.attributions FINAL
            UNION ALL SELECT 'commission_ledger', count() FROM ripple.commission_ledger FINAL
            UNION ALL SELECT 'alerts', count() FROM ripple.alerts FINAL
            UNION ALL SELECT 'dead_letters', count() FROM ripple.dead_letters FINAL
            UNION ALL SELECT 'late_events', count() FROM ripple.late_events FINAL""",
        "dead_letters": """
            SELECT topic, substring(error, 1, 90) AS error, count() AS messages
            FROM ripple.dead_letters FINAL
            GROUP BY topic, error
            ORDER BY messages DESC
            LIMIT 10""",
        "late_events": """
            SELECT topic, count() AS events, max(lateness_ms) AS max_lateness_ms
            FROM ripple.late_events FINAL
            GROUP BY topic
            ORDER BY events DESC""",
    },
}


class UnknownView(KeyError):
    pass


def query_view(ch: ClickHouse, name: str, model: str) -> dict[str, list[dict[str, Any]]]:
    if name not in VIEWS:
        raise UnknownView(name)
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}")
    return {key: ch.query_dicts(sql, {"model": model}) for key, sql in VIEWS[name].items()}
