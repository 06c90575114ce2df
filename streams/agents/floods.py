"""The floods agent: clicks per ``ip_hash|referrer`` key; a click flood blocks every click
of the burst (a verdict to each clicker's visitor key, ``ripple-blocks``) and raises one
``click_flood`` alert candidate (:func:`streams.fraud.flood_add` decides)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streams import fraud
from streams import referrer as referrer_logic
from streams.batch import Outbox, held


def handle(
    updates: Iterable[tuple[int, str, dict[str, Any]]], table: Any, box: Outbox, rules: fraud.FraudConfig
) -> None:
    """Apply ``(partition, key, click)`` in order to ``table`` through ``box``."""
    touched: dict[str, tuple[int, dict[str, Any]]] = {}
    for partition, key, click in updates:
        state = held(touched, table, key) or {}
        touched[key] = (partition, state)
        flooded = fraud.flood_add(state, click["ts"], click["event_id"], click["visitor_id"], rules)
        for ts, event_id, visitor in flooded:
            box.add(
                "ripple-blocks", visitor, {"visitor_id": visitor, "event_id": event_id, "ts": ts, "rule": "click_flood"}
            )
        if flooded:
            evidence = {
                "ip_hash": click["ip_hash"],
                "clicks": len(state["f"]),
                "window_ms": rules.flood_window_ms,
                "max_clicks": rules.flood_max_clicks,
                "click_event_ids": [c[1] for c in flooded[:20]],
            }
            box.emit([referrer_logic.alert("click_flood", "high", key, click["ts"], evidence, click["referrer_id"])])
    for key, (partition, state) in touched.items():
        box.put(table, partition, key, state)
