"""The code-leakage detector: state per code, kept at the code's referrer."""

from __future__ import annotations

from statistics import median
from typing import Any

from streams.fraud.config import FraudConfig

# -- code leakage: state per code, kept at the code's referrer ------------------------------
# {"b": {bucket: {order_id: [untouched, coupon]}}, "s": {bucket: [n, untouched]},
#  "x": [leaking buckets], "w": latest redemption ts, "e": {bucket: when it fell behind (s)}}
LEAK_HISTORY = 28


def leak_bucket(ts: int, cfg: FraudConfig) -> int:
    return ts // cfg.leak_window_ms


def leak_open_from(state: dict[str, Any], cfg: FraudConfig) -> int:
    """The oldest bucket that is not yet ``block_hold_ms`` behind the code's latest
    redemption (event time)."""
    return leak_bucket(state["w"], cfg) - 1 - cfg.block_hold_ms // cfg.leak_window_ms


def leak_add(
    state: dict[str, Any], order_id: str, ts: int, untouched: bool, coupon: bool, cfg: FraudConfig
) -> int | None:
    """Record (or update) one redemption of the code; return its bucket, or None when the
    bucket is settled (its detail is gone) and the redemption can change nothing."""
    state["w"] = max(int(state.get("w", ts)), ts)
    bucket = leak_bucket(ts, cfg)
    if str(bucket) in state.get("s", {}) and str(bucket) not in state.get("b", {}):
        return None
    orders = state.setdefault("b", {}).setdefault(str(bucket), {})
    orders[order_id] = [int(untouched), int(coupon)]
    state.setdefault("s", {})[str(bucket)] = [len(orders), sum(o[0] for o in orders.values())]
    return bucket


def leak_open_buckets(state: dict[str, Any], since: int) -> list[int]:
    """Buckets from ``since`` on that still hold their redemptions: a bucket's verdict
    depends on the buckets before it, so a change to one re-decides all of these."""
    return sorted(b for b in map(int, state.get("b", {})) if b >= since)


def leak_baseline(state: dict[str, Any], bucket: int, cfg: FraudConfig) -> float:
    """median + k·MAD of the untouched share of the code's earlier buckets (0 with < 3)."""
    earlier = sorted((int(b), v) for b, v in state.get("s", {}).items() if int(b) < bucket and v[0] > 0)
    shares = [u / n for _, (n, u) in earlier[-LEAK_HISTORY:]]
    if len(shares) < 3:
        return 0.0
    m = median(shares)
    return m + cfg.leak_mad_factor * median(abs(x - m) for x in shares)


def leak_check(state: dict[str, Any], bucket: int, followers: int | None, cfg: FraudConfig) -> dict[str, Any] | None:
    """The evidence when the bucket leaks: too many redemptions without a touch of the
    code's referrer against the code's own baseline, or more than its audience explains."""
    n, untouched = state.get("s", {}).get(str(bucket), [0, 0])
    if n < cfg.leak_min_redemptions:
        return None
    share = untouched / n
    threshold = max(cfg.leak_min_share, leak_baseline(state, bucket, cfg))
    signals = []
    if share > threshold:
        signals.append("untouched_share")
    if followers and n > cfg.leak_per_follower * followers:
        signals.append("audience")
    if not signals:
        return None
    return {
        "signals": signals,
        "redemptions": n,
        "untouched": untouched,
        "share": round(share, 4),
        "threshold": round(threshold, 4),
        "followers": followers or 0,
        "window_start_ms": bucket * cfg.leak_window_ms,
    }


def leak_blocked(state: dict[str, Any], bucket: int, leaking: bool) -> set[str]:
    """Redemptions of the bucket that earn no commission: untouched ones from a coupon site,
    and every untouched one while the bucket leaks."""
    orders = state.get("b", {}).get(str(bucket), {})
    return {o for o, (untouched, coupon) in orders.items() if untouched and (coupon or leaking)}


def leak_prune(state: dict[str, Any], cfg: FraudConfig, now_s: float, settled_before: float) -> list[str]:
    """Settle buckets: drop the per-order detail of a bucket ``block_hold_ms`` behind the
    code's latest redemption, once everything that was in the topics when it fell behind
    has been read (``settled_before``, wall clock: partitions read at different paces can
    hold its redemptions well behind the latest one). Return the settled orders. Keep the
    shares the open buckets' baselines need."""
    open_from = leak_open_from(state, cfg)
    behind: dict[str, float] = state.setdefault("e", {})
    gone: list[str] = []
    for b in [b for b in state.get("b", {}) if int(b) < open_from]:
        if behind.setdefault(b, now_s) < settled_before:
            gone += state["b"].pop(b)
            del behind[b]
    summaries = state.get("s", {})
    older = sorted((b for b in summaries if b not in state.get("b", {})), key=int)
    for b in older[: max(0, len(older) - LEAK_HISTORY)]:
        del summaries[b]
    state["x"] = [b for b in state.get("x", []) if str(b) in summaries]
    return gone
