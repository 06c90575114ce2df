"""The alerts agent: alert candidates per ``rule:subject`` key become at most one alert
per rule, subject and cool-down period (:func:`streams.fraud.admit_alert` decides)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streams import fraud
from streams.batch import Outbox, held


def handle(
    updates: Iterable[tuple[int, str, dict[str, Any]]], table: Any, box: Outbox, rules: fraud.FraudConfig
) -> list[dict[str, Any]]:
    """Apply ``(partition, key, candidate)`` in order to ``table`` through ``box``; the
    alerts admitted (each also an ``alerts`` row in ``box``)."""
    touched: dict[str, tuple[int, dict[str, Any]]] = {}
    admitted: list[dict[str, Any]] = []
    for partition, key, candidate in updates:
        state = held(touched, table, key) or {}
        touched[key] = (partition, state)
        row = fraud.admit_alert(state, candidate, rules)
        if row is not None:
            admitted.append(row)
            box.add("alerts", row["alert_id"], row)
    for key, (partition, state) in touched.items():
        box.put(table, partition, key, state)
    return admitted
