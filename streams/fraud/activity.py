"""Refund rate and conversion spikes: state per referrer."""

from __future__ import annotations

import math
from typing import Any

from streams.fraud.config import FraudConfig

# -- refund rate and conversion spikes: state per referrer ----------------------------------
# {"o": {order_id: ts}, "r": [refunded order ids], "h": {hour: orders}, "t": latest order ts}
HOUR_MS = 3_600_000
SPIKE_HISTORY_HOURS = 168


def activity_order(state: dict[str, Any], order_id: str, ts: int, credited: bool, cfg: FraudConfig) -> bool:
    """Add or remove an order credited to the referrer; True when the set changed."""
    orders: dict[str, int] = state.setdefault("o", {})
    hours: dict[str, int] = state.setdefault("h", {})
    hour = str(ts // HOUR_MS)
    if credited == (order_id in orders):
        return False
    if credited:
        orders[order_id] = ts
        hours[hour] = hours.get(hour, 0) + 1
        # the first hour with a credited order: history even after its hour left the window
        state["f"] = min(int(state.get("f", ts // HOUR_MS)), ts // HOUR_MS)
    else:
        old = str(orders.pop(order_id) // HOUR_MS)
        if old in hours:  # hours older than the spike history are gone already
            hours[old] -= 1
            if not hours[old]:
                del hours[old]
    seen = int(state.get("t", 0))
    latest = max(seen, ts) if credited else seen
    state["t"] = latest
    if latest // HOUR_MS != seen // HOUR_MS:
        # forget what left the windows, at most once per hour of event time: not per order
        for o in [o for o, t in orders.items() if t <= latest - cfg.refund_window_ms]:
            del orders[o]
        oldest_hour = latest // HOUR_MS - SPIKE_HISTORY_HOURS
        for h in [h for h in hours if int(h) < oldest_hour]:
            del hours[h]
        refunded = set(state.get("r", []))
        state["r"] = sorted(refunded & set(orders)) + sorted(refunded - set(orders))[-1000:]
    return True


def activity_refund(state: dict[str, Any], order_id: str) -> bool:
    refunded: list[str] = state.setdefault("r", [])
    if order_id in refunded:
        return False
    refunded.append(order_id)
    return True


def refund_check(state: dict[str, Any], cfg: FraudConfig) -> dict[str, Any] | None:
    """The referrer's refund rate over the window ending at its latest order."""
    orders: dict[str, int] = state.get("o", {})
    if not orders:
        return None
    latest = max(orders.values())
    window = [o for o, t in orders.items() if t > latest - cfg.refund_window_ms]
    refunded = len(set(window) & set(state.get("r", [])))
    rate = refund_rate(len(window), refunded, cfg)
    if rate is None:
        return None
    return {"orders": len(window), "refunded": refunded, "rate": round(rate, 4), "max_rate": cfg.refund_max_rate}


def spike_check(state: dict[str, Any], ts: int, cfg: FraudConfig) -> dict[str, Any] | None:
    """The hour of ``ts`` against an EWMA of the referrer's own earlier hours (zero hours
    included), once it has three hours of history. History starts at the referrer's first
    credited order, even one older than the window (its quiet hours since count)."""
    hours = {int(h): n for h, n in state.get("h", {}).items()}
    hour = ts // HOUR_MS
    orders = hours.get(hour, 0)
    earlier = [h for h in hours if h < hour]
    if "f" in state and int(state["f"]) < hour:
        earlier.append(int(state["f"]))
    if orders < cfg.spike_min_orders or not earlier:
        return None
    first = max(min(earlier), hour - SPIKE_HISTORY_HOURS)
    if hour - first < 3:
        return None
    lam, mean, var = cfg.spike_lambda, 0.0, 0.0
    for h in range(first, hour):
        diff = hours.get(h, 0) - mean
        mean += lam * diff
        var = (1 - lam) * (var + lam * diff * diff)
    z = (orders - mean) / max(math.sqrt(var), 1.0)
    if z <= cfg.spike_z:
        return None
    return {"hour_start_ms": hour * HOUR_MS, "orders": orders, "ewma": round(mean, 3), "z": round(z, 2)}


def refund_rate(orders: int, refunded: int, cfg: FraudConfig) -> float | None:
    """The creator's refund rate over the window when it is over the limit."""
    if orders < cfg.refund_min_orders:
        return None
    rate = refunded / orders
    return rate if rate > cfg.refund_max_rate else None
