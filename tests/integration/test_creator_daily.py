"""creator_daily on a small fixture, every number computed by hand.

Rows go straight into chDB through the sink's own row mapping and the project's DDL,
including superseded and duplicate rows that a ReplacingMergeTree has not merged yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from sinks.clickhouse import ClickHouse
from sinks.tables import ATTRIBUTION_COLUMNS, JSON_TABLES, SPECS

D = 1_767_571_200_000  # 2026-01-05T00:00Z
DAY = 86_400_000


def attribution(order_id: str, referrer: str, credit: float, amount: int, version: int, ts: int) -> tuple[Any, ...]:
    row = {
        "order_id": order_id,
        "model": "last_click",
        "referrer_id": referrer,
        "referrer_type": "creator",
        "root_creator_id": referrer,
        "touch_type": "click",
        "touch_event_id": "c",
        "credit": credit,
        "revenue_minor": round(credit * amount),
        "commission_minor": round(credit * amount * 0.10),
        "currency": "USD",
        "ctot_ms": 1000,
        "status": "ok",
        "reasons": [],
        "generation": 0,
        "version": version,
        "ts": ts,
    }
    return tuple(row[c] for c in ATTRIBUTION_COLUMNS)


@pytest.fixture(scope="module")
def ch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouse]:
    client = ClickHouse(f"chdb://{Path(tmp_path_factory.mktemp('daily')) / 'ch'}")
    client.migrate()

    def put(topic: str, events: list[dict[str, Any]]) -> None:
        spec = SPECS[topic]
        # each event inserted twice, in two inserts: duplicates that are not merged yet
        for _ in range(2):
            client.insert(spec.table, [spec.row(e, 1) for e in events], spec.columns)

    put(
        "creators",
        [
            {"creator_id": "cr-jane", "handle": "jane", "followers": 20_000, "plan": {"rate": 0.1}},
            {"creator_id": "cr-leo", "handle": "leo", "followers": 5_000},
        ],
    )
    put(
        "codes",
        [
            {"code": "JANE20", "referrer_id": "cr-jane", "referrer_type": "creator", "issued_ts": 0},
            {"code": "jane", "referrer_id": "cr-jane", "referrer_type": "creator", "issued_ts": 0},
            {"code": "leo", "referrer_id": "cr-leo", "referrer_type": "creator", "issued_ts": 0},
        ],
    )
    put(
        "views",
        [
            {"event_id": f"v{i}", "ts": D + i, "creator_id": "cr-jane", "content_id": "p", "visitor_id": f"v{i}"}
            for i in range(10)
        ],
    )
    put(
        "clicks",
        [
            {"event_id": "c1", "ts": D + 100, "visitor_id": "v1", "ref": "jane"},
            {"event_id": "c2", "ts": D + 200, "visitor_id": "v1", "ref": "jane"},
            {"event_id": "c3", "ts": D + 300, "visitor_id": "v2", "ref": "JANE20"},
            {"event_id": "c4", "ts": D + 400, "visitor_id": "v3", "ref": "Jane"},
        ],
    )
    order = lambda oid, cust, ts, amount, discount, new: {  # noqa: E731
        "event_id": f"e-{oid}",
        "ts": ts,
        "order_id": oid,
        "visitor_id": cust,
        "customer_id": cust,
        "amount_minor": amount,
        "currency": "USD",
        "discount_minor": discount,
        "is_new_customer": new,
    }
    put(
        "orders",
        [
            order("o1", "c1", D + 1000, 10_000, 0, True),
            order("o2", "c2", D + 2000, 8_000, 2_000, True),
            order("o3", "c1", D + 10 * DAY, 5_000, 0, False),  # organic, inside c1's first 30 days
            order("o4", "c1", D + 40 * DAY, 3_000, 0, False),  # organic, inside 90 days only
        ],
    )
    put("refunds", [{"event_id": "r1", "ts": D + 3 * DAY, "order_id": "o2", "amount_minor": 4_000}])
    client.insert(
        "attributions",
        [
            attribution("o1", "cr-leo", 1.0, 10_000, 1, D + 1000),  # first guess, restated below
            attribution("o1", "cr-leo", 0.0, 10_000, 2, D + 1000),  # leo lost it
            attribution("o1", "cr-jane", 1.0, 10_000, 2, D + 1000),
            attribution("o2", "cr-jane", 1.0, 8_000, 3, D + 2000),
        ],
        ATTRIBUTION_COLUMNS,
    )
    client.insert("attributions", [attribution("o2", "cr-jane", 1.0, 8_000, 3, D + 2000)], ATTRIBUTION_COLUMNS)
    ledger = JSON_TABLES["commission_ledger"]
    client.insert(
        "commission_ledger",
        [("flat_fee:cr-jane:2026-01", "", "cr-jane", "flat_fee", 50_000, "USD", "approved", 1_767_225_600_000, 1)],
        ledger,
    )
    yield client
    client.close()


def row(ch: ClickHouse, creator: str, day: date, model: str = "last_click") -> dict[str, Any]:
    rows = ch.query_dicts(
        "SELECT * FROM ripple.creator_daily WHERE creator_id = {c:String} AND day = {d:Date} AND model = {m:String}",
        {"c": creator, "d": day, "m": model},
    )
    assert len(rows) == 1, rows
    return rows[0]


EXPECTED = {
    "views": 10,
    "clicks": 4,
    "unique_clickers": 3,
    "conversions": 2,
    "revenue_minor": 18_000,
    "aov_minor": 9_000,
    "commission_minor": 1_000 + 400,  # o2's 800 halved by the refund of half its amount
    "discount_minor": 2_000,
    "refunds_minor": 4_000,
    "new_customers": 2,
    "flat_fees_minor": 0,
    "ctr": 0.4,
    "cr": 2 / 3,
    "epc": 1_400 / 4,
    "rpc": 18_000 / 4,
    "cac": (1_400 + 2_000) / 2,
    "roi": (18_000 - 4_000 - 3_400) / 3_400,
    "ltv_30d_minor": ((10_000 + 5_000) + (8_000 - 4_000)) / 2,
    "ltv_90d_minor": ((10_000 + 5_000 + 3_000) + (8_000 - 4_000)) / 2,
}


@pytest.mark.parametrize("column", EXPECTED)
def test_jane_on_the_day(ch: ClickHouse, column: str) -> None:
    got = row(ch, "cr-jane", date(2026, 1, 5))
    assert got["currency"] == "USD"
    assert math.isclose(float(got[column]), EXPECTED[column], rel_tol=1e-9), (column, got[column])


def test_a_superseded_credit_counts_for_nobody(ch: ClickHouse) -> None:
    rows = ch.query("SELECT count() FROM ripple.creator_daily WHERE creator_id = 'cr-leo'")
    assert rows == [(0,)]


def test_flat_fee_lands_on_the_first_of_the_month(ch: ClickHouse) -> None:
    got = row(ch, "cr-jane", date(2026, 1, 1))
    assert got["flat_fees_minor"] == 50_000 and got["conversions"] == 0 and got["roi"] == -1.0
    assert got["ctr"] is None and got["cac"] is None


def test_every_model_has_a_row(ch: ClickHouse) -> None:
    models = {r[0] for r in ch.query("SELECT DISTINCT model FROM ripple.creator_daily")}
    assert models == {"last_click", "first_click", "linear", "time_decay", "position_based"}
