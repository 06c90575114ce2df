"""Per-event rules (click injection, bots, coupon sites), alert candidates and their cool-down,
and the click-flood detector (state per ip hash and referrer)."""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right, insort
from typing import Any

from streams.fraud.config import FraudConfig


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
