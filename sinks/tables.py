"""How each topic's records become rows of a ClickHouse table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from streams.events import MAX_FUTURE_MS, decode, message_time

Row = tuple[Any, ...]


def tier(followers: int) -> str:
    if followers < 10_000:
        return "nano"
    if followers < 100_000:
        return "micro"
    return "macro"


def _s(event: dict[str, Any], key: str) -> str:
    value = event.get(key)
    return "" if value is None else str(value)


@dataclass(frozen=True)
class TableSpec:
    table: str
    columns: tuple[str, ...]
    row: Callable[[dict[str, Any], int], Row]  # (event, message timestamp) -> row


SPECS: dict[str, TableSpec] = {
    "views": TableSpec(
        "views",
        ("event_id", "ts", "creator_id", "content_id", "visitor_id", "platform", "kind"),
        lambda e, _: (
            e["event_id"],
            e["ts"],
            e["creator_id"],
            e["content_id"],
            _s(e, "visitor_id"),
            _s(e, "platform"),
            _s(e, "kind"),
        ),
    ),
    "clicks": TableSpec(
        "clicks",
        (
            "event_id",
            "ts",
            "visitor_id",
            "ref",
            "creator_id",
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "utm_content",
            "ip_hash",
            "user_agent",
            "referrer_domain",
            "landing_url",
        ),
        lambda e, _: (
            e["event_id"],
            e["ts"],
            e["visitor_id"],
            e["ref"],
            _s(e, "creator_id"),
            _s(e, "utm_source"),
            _s(e, "utm_medium"),
            _s(e, "utm_campaign"),
            _s(e, "utm_content"),
            _s(e, "ip_hash"),
            _s(e, "user_agent"),
            _s(e, "referrer_domain"),
            _s(e, "landing_url"),
        ),
    ),
    "orders": TableSpec(
        "orders",
        (
            "event_id",
            "ts",
            "order_id",
            "visitor_id",
            "customer_id",
            "amount_minor",
            "currency",
            "discount_code",
            "discount_minor",
            "is_new_customer",
            "email_hash",
            "payment_hash",
            "shipping_hash",
            "device_id",
            "ip_hash",
            "user_agent",
            "referrer_domain",
            "items",
        ),
        lambda e, _: (
            e["event_id"],
            e["ts"],
            e["order_id"],
            e["visitor_id"],
            e["customer_id"],
            e["amount_minor"],
            e["currency"],
            _s(e, "discount_code"),
            e.get("discount_minor") or 0,
            1 if e.get("is_new_customer") else 0,
            _s(e, "email_hash"),
            _s(e, "payment_hash"),
            _s(e, "shipping_hash"),
            _s(e, "device_id"),
            _s(e, "ip_hash"),
            _s(e, "user_agent"),
            _s(e, "referrer_domain"),
            orjson.dumps(e.get("items") or []).decode(),
        ),
    ),
    "refunds": TableSpec(
        "refunds",
        ("event_id", "ts", "order_id", "amount_minor", "reason"),
        lambda e, _: (e["event_id"], e["ts"], e["order_id"], e["amount_minor"], _s(e, "reason")),
    ),
    "codes": TableSpec(
        "codes",
        (
            "code",
            "code_lower",
            "referrer_id",
            "referrer_type",
            "issued_ts",
            "active",
            "expires_ts",
            "platform",
            "discount_pct",
            "landing_url",
            "version",
        ),
        lambda e, msg_ts: (
            e["code"],
            e["code"].lower(),
            e["referrer_id"],
            e["referrer_type"],
            e["issued_ts"],
            0 if e.get("active") is False else 1,
            e.get("expires_ts"),
            _s(e, "platform"),
            e.get("discount_pct"),
            _s(e, "landing_url"),
            msg_ts,
        ),
    ),
    "creators": TableSpec(
        "creators",
        (
            "creator_id",
            "handle",
            "platform",
            "followers",
            "tier",
            "niche",
            "email_hash",
            "payment_hash",
            "device_ids",
            "plan",
            "version",
        ),
        lambda e, msg_ts: (
            e["creator_id"],
            e["handle"],
            _s(e, "platform"),
            e.get("followers") or 0,
            tier(e.get("followers") or 0),
            _s(e, "niche"),
            _s(e, "email_hash"),
            _s(e, "payment_hash"),
            list(e.get("device_ids") or []),
            orjson.dumps(e.get("plan") or {}).decode(),
            msg_ts,
        ),
    ),
}

ATTRIBUTION_COLUMNS = (
    "order_id",
    "model",
    "referrer_id",
    "referrer_type",
    "root_creator_id",
    "touch_type",
    "touch_event_id",
    "credit",
    "revenue_minor",
    "commission_minor",
    "currency",
    "ctot_ms",
    "status",
    "reasons",
    "generation",
    "version",
    "ts",
)
DEAD_LETTER_COLUMNS = ("topic", "partition", "offset", "idx", "error", "raw", "ts")
#: values of columns added later, for records written before them
COLUMN_DEFAULTS: dict[str, Any] = {"active": 1}
#: output topics whose JSON records map one to one onto a table's columns
JSON_TABLES: dict[str, tuple[str, ...]] = {
    "attributions": ATTRIBUTION_COLUMNS,
    "commission_ledger": (
        "entry_id",
        "order_id",
        "referrer_id",
        "kind",
        "commission_minor",
        "currency",
        "status",
        "ts",
        "version",
    ),
    "conflicts": (
        "order_id",
        "code_referrer_id",
        "click_referrer_id",
        "policy",
        "winner",
        "ts",
        "active",
        "version",
    ),
    "late_events": ("topic", "event_id", "ts", "stream_time", "lateness_ms", "partition"),
    "chain_nodes": ("node_id", "parent_id", "root_id", "generation", "ts", "active", "version"),
    "chains": (
        "root_id",
        "nodes",
        "depth",
        "nodes_by_generation",
        "k_by_generation",
        "structural_virality",
        "viral",
        "new_nodes_1h",
        "new_nodes_24h",
        "time_to_next_generation_ms",
        "cascade_revenue_minor",
        "cascade_commission_minor",
        "updated_ts",
        "version",
    ),
    "alerts": ("alert_id", "ts", "rule", "severity", "referrer_id", "code", "evidence"),
}


def rows_for_message(
    topic: str,
    value: bytes | None,
    headers: list[tuple[str, Any]] | None,
    timestamp: int,
    max_future_ms: int = MAX_FUTURE_MS,
) -> tuple[str, tuple[str, ...], list[Row]]:
    """Turn one Kafka message of any consumed topic into (table, columns, rows).

    Raw events are checked as the worker checks them (``max_future_ms`` is the same
    setting), so the raw tables hold exactly what the worker credits."""
    if topic in SPECS:
        spec = SPECS[topic]
        # the worker dead-letters the rest
        good, _ = decode(topic, value, message_time(timestamp, int(time.time() * 1000)), max_future_ms)
        return spec.table, spec.columns, [spec.row(e, timestamp) for e in good]
    if topic in JSON_TABLES:
        columns = JSON_TABLES[topic]
        loaded = orjson.loads(value or b"{}")
        records = loaded if isinstance(loaded, list) else [loaded]  # one record or several of a key
        return topic, columns, [tuple(r[c] if c in r else COLUMN_DEFAULTS[c] for c in columns) for r in records]
    if topic == "deadletter":
        h = {k: v for k, v in headers or []}
        return (
            "dead_letters",
            DEAD_LETTER_COLUMNS,
            [
                (
                    h.get("topic", b"").decode(),
                    int(h.get("partition", b"0")),
                    int(h.get("offset", b"0")),
                    int(h.get("index", b"-1")),
                    h.get("error", b"").decode(errors="replace"),
                    value or b"",
                    timestamp,
                )
            ],
        )
    raise ValueError(f"the sink does not read topic {topic!r}")
