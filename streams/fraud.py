"""Fraud and code-leakage rules (SPEC §5): pure functions and small stateful detectors.

Thresholds come from one versioned file, ``deploy/fraud/rules.json`` (defaults from the
published rules in shared/reference/fraud-rules.md); the bot and coupon-site lists are data
files beside it. Nothing here talks to Kafka or ClickHouse. ``self_referral`` and
``referral_ring`` are decided in :mod:`streams.lineage`.

Detectors keep JSON-able state so they can live in the agents' tables; every verdict is a
function of the events seen, not of their arrival order, so replays reach the same one.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

FRAUD_DIR = Path(__file__).resolve().parent.parent / "deploy" / "fraud"
SUPPORTED_VERSIONS = (1,)
#: what happens to a leaked code's redemptions without a touch of the code's referrer
LEAK_POLICIES = ("no_commission", "alert_only")


class FraudConfigError(ValueError):
    """The rules file cannot be used; the message is one line."""


@dataclass(frozen=True)
class FraudConfig:
    version: int
    block_below_ms: int
    flag_below_ms: int
    flood_max_clicks: int
    flood_window_ms: int
    bot_patterns: tuple[str, ...]
    leak_window_ms: int
    leak_min_redemptions: int
    leak_min_share: float
    leak_mad_factor: float
    leak_per_follower: float
    leak_policy: str
    coupon_domains: frozenset[str]
    refund_window_ms: int
    refund_max_rate: float
    refund_min_orders: int
    spike_lambda: float
    spike_z: float
    spike_min_orders: int
    cooldown_ms: int
    block_hold_ms: int


def _number(rules: dict[str, Any], rule: str, key: str, low: float, high: float) -> float:
    try:
        value = rules[rule][key]
    except (KeyError, TypeError):
        raise FraudConfigError(f"rule {rule!r} needs {key!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise FraudConfigError(f"rules.{rule}.{key} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _choice(rules: dict[str, Any], rule: str, key: str, allowed: tuple[str, ...]) -> str:
    value = rules.get(rule, {}).get(key) if isinstance(rules.get(rule), dict) else None
    if value not in allowed:
        raise FraudConfigError(f"rules.{rule}.{key} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise FraudConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FraudConfigError(f"{path} is not UTF-8 text") from None
    return [ln.strip().lower() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def load_config(path: Path = FRAUD_DIR / "rules.json") -> FraudConfig:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise FraudConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FraudConfigError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FraudConfigError(f"{path} is not JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise FraudConfigError(f"{path}: expected a JSON object with 'version' and 'rules'")
    if raw.get("version") not in SUPPORTED_VERSIONS:
        raise FraudConfigError(f"{path}: version must be one of {SUPPORTED_VERSIONS}, got {raw.get('version')!r}")
    rules = raw.get("rules")
    if not isinstance(rules, dict):
        raise FraudConfigError(f"{path}: 'rules' must be an object")
    for name in ("bot_click", "code_leakage"):  # read with .get below
        if not isinstance(rules.get(name, {}), dict):
            raise FraudConfigError(f"{path}: rules.{name} must be an object")
    block = _number(rules, "click_injection", "block_below_ms", 0, 3_600_000)
    flag = _number(rules, "click_injection", "flag_below_ms", 0, 86_400_000)
    if flag < block:
        raise FraudConfigError("rules.click_injection.flag_below_ms must not be below block_below_ms")
    folder = path.parent
    return FraudConfig(
        version=int(raw["version"]),
        block_below_ms=int(block),
        flag_below_ms=int(flag),
        flood_max_clicks=int(_number(rules, "click_flood", "max_clicks", 1, 1_000_000)),
        flood_window_ms=int(_number(rules, "click_flood", "window_ms", 1, 86_400_000)),
        bot_patterns=tuple(_lines(folder / str(rules.get("bot_click", {}).get("user_agents_file", "")))),
        leak_window_ms=int(_number(rules, "code_leakage", "window_ms", 60_000, 30 * 86_400_000)),
        leak_min_redemptions=int(_number(rules, "code_leakage", "min_redemptions", 1, 1_000_000)),
        leak_min_share=_number(rules, "code_leakage", "min_share", 0, 1),
        leak_mad_factor=_number(rules, "code_leakage", "mad_factor", 0, 100),
        leak_per_follower=_number(rules, "code_leakage", "max_redemptions_per_follower", 0, 1000),
        leak_policy=_choice(rules, "code_leakage", "policy", LEAK_POLICIES),
        coupon_domains=frozenset(_lines(folder / str(rules.get("code_leakage", {}).get("coupon_domains_file", "")))),
        refund_window_ms=int(_number(rules, "refund_rate", "window_ms", 86_400_000, 365 * 86_400_000)),
        refund_max_rate=_number(rules, "refund_rate", "max_rate", 0, 1),
        refund_min_orders=int(_number(rules, "refund_rate", "min_orders", 1, 1_000_000)),
        spike_lambda=_number(rules, "conversion_spike", "ewma_lambda", 0.01, 1),
        spike_z=_number(rules, "conversion_spike", "z", 0.5, 100),
        spike_min_orders=int(_number(rules, "conversion_spike", "min_orders", 1, 1_000_000)),
        cooldown_ms=int(_number({"rules": rules}, "rules", "cooldown_ms", 0, 7 * 86_400_000)),
        block_hold_ms=int(_number({"rules": rules}, "rules", "block_hold_ms", 0, 30 * 86_400_000)),
    )


# -- per-event rules ----------------------------------------------------------------------
def click_injection(ctot_ms: int, cfg: FraudConfig) -> str | None:
    """Click-to-order time: ``block`` (the touch gets no credit) or ``flag``."""
    if ctot_ms < cfg.block_below_ms:
        return "block"
    if ctot_ms < cfg.flag_below_ms:
        return "flag"
    return None


def is_bot(user_agent: str | None, cfg: FraudConfig) -> bool:
    ua = (user_agent or "").lower()
    return any(p in ua for p in cfg.bot_patterns)


def coupon_site(referrer_domain: str | None, cfg: FraudConfig) -> bool:
    domain = (referrer_domain or "").lower().rstrip(".")
    return any(domain == d or domain.endswith("." + d) for d in cfg.coupon_domains)


# -- alerts -------------------------------------------------------------------------------
SEVERITIES = ("info", "warning", "high", "critical")
#: the alerts each rule raises
RULE_SEVERITIES = (
    ("self_referral", "high"),
    ("referral_ring", "high"),
    ("click_injection", "high"),
    ("click_injection", "warning"),
    ("click_flood", "high"),
    ("bot_click", "warning"),
    ("code_leakage", "high"),
    ("refund_rate", "warning"),
    ("conversion_spike", "warning"),
    ("viral_chain", "info"),
)


def candidate(
    rule: str,
    severity: str,
    subject: str,
    ts: int,
    evidence: dict[str, Any],
    referrer_id: str = "",
    code: str = "",
) -> dict[str, Any]:
    """An alert before de-duplication: the alerts agent keeps one per rule, subject and
    cool-down period (see :func:`alert_id`)."""
    assert severity in SEVERITIES, severity
    return {
        "rule": rule,
        "severity": severity,
        "subject": subject,
        "ts": ts,
        "referrer_id": referrer_id,
        "code": code,
        "evidence": evidence,
    }


def alert_period(ts: int, cfg: FraudConfig) -> int:
    """Cool-down periods are fixed event-time buckets, so a replay finds the same one."""
    return ts // cfg.cooldown_ms if cfg.cooldown_ms > 0 else ts


def alert_id(cand: dict[str, Any], cfg: FraudConfig) -> str:
    return f"{cand['rule']}:{cand['subject']}:{alert_period(cand['ts'], cfg)}"


def admit_alert(state: dict[str, Any], cand: dict[str, Any], cfg: FraudConfig) -> dict[str, Any] | None:
    """The alert row to write for a candidate, or None when its period already has one.

    ``state`` is per rule and subject: ``{period: severity rank}`` for recent periods. A
    candidate of a higher severity in the same period rewrites the alert (same id)."""
    period = str(alert_period(cand["ts"], cfg))
    rank = SEVERITIES.index(cand["severity"])
    if state.get(period, -1) >= rank:
        return None
    state[period] = rank
    for old in sorted(state, key=int)[:-16]:
        del state[old]
    return {
        "alert_id": alert_id(cand, cfg),
        "ts": cand["ts"],
        "rule": cand["rule"],
        "severity": cand["severity"],
        "referrer_id": cand["referrer_id"],
        "code": cand["code"],
        "evidence": json.dumps({"subject": cand["subject"], **cand["evidence"]}, sort_keys=True),
    }


# -- click flood: state per (ip_hash, referrer) ---------------------------------------------
# {"c": [[ts, event_id, visitor_id], ...] sorted, "f": [flooded event ids]}
def flood_add(state: dict[str, Any], ts: int, event_id: str, visitor_id: str, cfg: FraudConfig) -> list[list[Any]]:
    """Record a click; return the clicks that this click makes part of a flood.

    A click is flooded when some window ``(t - window_ms, t]`` ending at a click of the
    same ip and referrer holds more than ``max_clicks`` clicks — a property of the whole
    set of clicks, so the final answer does not depend on arrival order."""
    clicks: list[list[Any]] = state.setdefault("c", [])
    flooded: list[str] = state.setdefault("f", [])
    if any(c[1] == event_id for c in clicks):
        return []
    insort(clicks, [ts, event_id, visitor_id])
    window = cfg.flood_window_ms
    times = [c[0] for c in clicks]
    new: dict[str, list[Any]] = {}
    # only windows ending at clicks in [ts, ts + window) can contain the new click
    lo_end, hi_end = bisect_left(times, ts), bisect_left(times, ts + window)
    for j in range(lo_end, hi_end):
        first = bisect_right(times, times[j] - window)
        if j + 1 - first > cfg.flood_max_clicks:
            for c in clicks[first : j + 1]:
                if c[1] not in flooded and c[1] not in new:
                    new[c[1]] = c
    flooded.extend(new)
    # forget what no window can reach again (the flood verdicts were already sent)
    horizon = clicks[-1][0] - window - cfg.block_hold_ms
    if clicks[0][0] < horizon:
        keep = bisect_left(times, horizon)
        gone = {c[1] for c in clicks[:keep]}
        del clicks[:keep]
        state["f"] = [f for f in flooded if f not in gone]
    return sorted(new.values())


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
