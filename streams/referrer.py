"""What happens at a referrer's key: credits in; attributions, commission terms, lineage,
chain updates and alerts out. Pure logic over the referrer's JSON-able state.

State: ``{"m": monthly book, "seq": n, "lin": lineage, "codes": {code: leakage state},
"red": {order_id: untouched redemption and its rows}, "act": credited orders, refunds and
orders per hour}`` (see :mod:`streams.commission`, :mod:`streams.lineage` and
:mod:`streams.fraud`). Every output is a ``(topic, key, value)`` triple.

Besides credit rows, the referrer's key receives *notes*: a ``redemption`` of one of its
codes (from the visitor's key: was the code's referrer touched, did the order come from a
coupon site) and a ``refund`` of an order credited to it (from the order's key). The
referrer is the one place that sees all of its codes' redemptions and all of its orders,
so leakage, refund rate and conversion spikes are decided here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams import commission as comm
from streams import fraud, lineage

Output = tuple[str, str, dict[str, Any]]
BLOCKING_RULES = ("referral_ring", "self_referral")


@dataclass(frozen=True)
class Context:
    """What a referrer's logic needs from outside its own state."""

    plan_of: Callable[[str], comm.Plan]
    identities_of: Callable[[str], list[str]]
    commission_model: str = "last_click"
    rules: fraud.FraudConfig = field(default_factory=fraud.load_config)
    followers_of: Callable[[str], int | None] = lambda _referrer: None


#: fields of a credit row the referrer reads (the order's amount, the buyer and its hashed
#: identities) that an attributions record does not carry
CREDIT_ONLY = frozenset({"amount_minor", "customer_id", "identities"})


def new_state() -> dict[str, Any]:
    return comm.new_book()


def alert(
    rule: str, severity: str, subject: str, ts: int, evidence: dict[str, Any], referrer_id: str = "", code: str = ""
) -> Output:
    """An alert candidate for the alerts agent, keyed by rule and subject."""
    cand = fraud.candidate(rule, severity, subject, ts, evidence, referrer_id, code)
    return ("ripple-alerts", f"{rule}:{subject}", cand)


def on_credit(
    state: dict[str, Any], row: dict[str, Any], ctx: Context, now_s: float = 0.0, settled_before: float = math.inf
) -> list[Output]:
    """One item for the referrer whose state this is: a credit row (any model) or a note.

    A customer refers as a node of a tree, and its place comes from a claim that travels
    one hop more than its friends' orders and may still move (a restatement of the order
    that placed it). So a customer's credits wait ("park") until its place is *settled*:
    placed before ``settled_before``, the time up to which the worker has read everything a
    claim could travel through. Then they are booked; a customer still without a place
    then starts a tree of its own.
    """
    kind = row.get("type")
    if kind == "redemption":
        return on_redemption(state, row, ctx, now_s, settled_before)
    if kind == "refund":
        return on_refund(state, row, ctx)
    if row["referrer_type"] == "customer" and _unsettled(state, settled_before):
        parked = state.setdefault("parked", {"since": now_s, "rows": []})
        parked["rows"].append(row)
        return [_hold("hold", row)] if _may_claim(row, ctx) else []
    return _credit(state, row, ctx)


def _may_claim(row: dict[str, Any], ctx: Context) -> bool:
    """Whether booking this row can send its customer a claim."""
    return row["model"] == ctx.commission_model and row["credit"] > 0 and bool(row.get("customer_id"))


def _hold(kind: str, row: dict[str, Any]) -> Output:
    """A parked row's customer may still get a claim from this referrer: a ``hold`` tells
    it to wait (it may not start a tree of its own), an ``unhold`` that the wait is over —
    sent after whatever booking the row sent it, so the customer has its claim first. The
    referrer and its customer may live on different workers: the hold travels as a claim does."""
    return (
        "ripple-lineage",
        row["customer_id"],
        {"type": kind, "node_id": row["customer_id"], "by": f"{row['referrer_id']} {row['order_id']}"},
    )


def _unsettled(state: dict[str, Any], settled_before: float) -> bool:
    lin = state.get("lin")
    return "parked" in state or lin is None or float(lin.get("placed", 0.0)) >= settled_before


def release(state: dict[str, Any], ctx: Context, settled_before: float = math.inf) -> list[Output]:
    """Book the parked credits once the customer's place (or its lack of one) is settled."""
    parked = state.get("parked")
    if parked is None or float(parked.get("since", 0.0)) >= settled_before:
        return []
    lin = state.get("lin")
    if lin is not None and float(lin.get("placed", 0.0)) >= settled_before:
        return []  # it moved since: wait for the next settled time
    del state["parked"]
    out: list[Output] = []
    for row in parked["rows"]:
        out.extend(_credit(state, row, ctx))
    out.extend(_hold("unhold", row) for row in parked["rows"] if _may_claim(row, ctx))
    return out


def _credit(state: dict[str, Any], row: dict[str, Any], ctx: Context) -> list[Output]:
    referrer = row["referrer_id"]
    plan = ctx.plan_of(referrer)
    out: list[Output] = []
    lin, new_root = lineage.ensure_lineage(state, referrer, ctx.identities_of(referrer))
    if new_root:
        node = {
            "node_id": referrer,
            "parent_id": "",
            "root_id": referrer,
            "generation": 0,
            "ts": row["ts"],
            "version": 0,
            "active": 1,
        }
        out.append(("chain_nodes", referrer, node))
        out.append(("ripple-chains", referrer, {"type": "root", **node}))
    seq = comm.next_seq(state)
    flags = [r for r in row.get("reasons") or () if r not in BLOCKING_RULES and r != "code_leakage"]
    row = {**row, "root_creator_id": lin["root"], "generation": lin["gen"], "status": "ok", "reasons": flags}
    rule = lineage.identity_match(lin, row.get("identities") or []) if row["credit"] > 0 else None
    redemption = state.get("red", {}).get(row["order_id"])
    if redemption is not None:
        redemption.setdefault("rows", {})[row["model"]] = row
        if rule is None and row["credit"] > 0 and redemption.get("blocked"):
            rule = "code_leakage"
    if rule is not None:
        row["status"], row["reasons"] = "blocked", [rule, *flags]
    if row["model"] != ctx.commission_model:
        rate = 0.0 if rule else plan.rate
        out.append(
            (
                "attributions",
                row["order_id"],
                {
                    **{k: v for k, v in row.items() if k not in CREDIT_ONLY},
                    "commission_minor": round(row["credit"] * row["amount_minor"] * rate),
                    "version": (row["version"] << 32) | seq,
                },
            )
        )
        return out

    if rule in BLOCKING_RULES:
        out.append(
            alert(
                rule,
                "high",
                referrer,
                row["ts"],
                {
                    "order_id": row["order_id"],
                    "customer_id": row.get("customer_id", ""),
                    "matched": sorted(set(row.get("identities") or []) & set(lin["own"] + lin["anc"])),
                    "root_id": lin["root"],
                },
                referrer,
            )
        )
    elif row["credit"] > 0 and row.get("customer_id"):
        # a customer credited to this referrer becomes its child (a leaked code still
        # credits the order: only identity rules deny the place)
        claim = lineage.claim_for(referrer, lin, row)
        out.append(("ripple-lineage", claim["node_id"], claim))
        lin["used"] = True  # it has referred someone: its own place is fixed from now on
    elif row["credit"] <= 0 and row.get("customer_id"):
        # the order lost this referrer's credit: a claim it may have made is void
        retract = {
            "type": "retract",
            "node_id": row["customer_id"],
            "parent_id": referrer,
            "order_id": row["order_id"],
            "version": row["version"],
            "ts": row["ts"],
        }
        out.append(("ripple-lineage", row["customer_id"], retract))

    out.extend(_activity(state, row, rule is None and row["credit"] > 0, ctx))
    # blocked orders earn nothing and do not count towards tiers
    book_row = {**row, "credit": 0.0} if rule else row
    new_month, changed = comm.book_order(state, book_row, plan)
    if new_month:
        fee = comm.flat_fee_entry(referrer, comm.month_of(row["ts"]), plan, row["currency"])
        if fee is not None:
            out.append(("commission_ledger", fee["entry_id"], fee))
    for order_id, b in changed:
        credit, amount, rate = b.credit, b.amount, b.rate
        version = (b.version << 32) | seq
        shown = row if order_id == row["order_id"] else {**b.row, "credit": credit}
        out.append(
            (
                "attributions",
                order_id,
                {
                    "order_id": order_id,
                    "model": row["model"],
                    "referrer_id": referrer,
                    **b.row,
                    "status": shown["status"],
                    "reasons": shown["reasons"],
                    "credit": shown["credit"],
                    "revenue_minor": round(shown["credit"] * amount),
                    "commission_minor": round(credit * amount * rate),
                    "currency": b.currency,
                    "version": version,
                    "ts": b.ts,
                },
            )
        )
        terms = {
            "order_id": order_id,
            "referrer_id": referrer,
            "credit": credit,
            "amount_minor": amount,
            "rate": rate,
            "currency": b.currency,
            "ts": b.ts,
            "hold_days": plan.hold_days,
            "version": version,
            "kind": "commission",
        }
        out.append(("ripple-commissions", order_id, terms))
        if lin["parent"]:
            parent_plan = ctx.plan_of(lin["parent"])
            if parent_plan.override_rate > 0:
                out.append(
                    (
                        "ripple-commissions",
                        order_id,
                        {
                            **terms,
                            "referrer_id": lin["parent"],
                            "rate": parent_plan.override_rate,
                            "kind": "override",
                        },
                    )
                )
        out.append(
            (
                "ripple-chains",
                lin["root"],
                {
                    "type": "revenue",
                    "root_id": lin["root"],
                    "order_id": order_id,
                    "referrer_id": referrer,
                    "revenue_minor": round(credit * amount),
                    "commission_minor": round(credit * amount * rate),
                    "ts": b.ts,
                },
            )
        )
    comm.prune_book(state, row["ts"])
    return out


# -- fraud notes -------------------------------------------------------------------------
def _activity(state: dict[str, Any], row: dict[str, Any], credited: bool, ctx: Context) -> list[Output]:
    """Track the referrer's credited orders: conversion spikes per hour, refund rate."""
    act = state.setdefault("act", {})
    if not fraud.activity_order(act, row["order_id"], row["ts"], credited, ctx.rules) or not credited:
        return []
    spike = fraud.spike_check(act, row["ts"], ctx.rules)
    ts = row["ts"]
    if spike is None:
        # An order that arrives after later hours (a backlog, a replay) changes their
        # baselines: an hour that had too little history when its own orders came may be a
        # spike now. Arrival order must not decide whether a spike is seen.
        hour = row["ts"] // fraud.HOUR_MS
        for later in sorted(h for h in map(int, act.get("h", {})) if h > hour):
            spike = fraud.spike_check(act, later * fraud.HOUR_MS, ctx.rules)
            if spike is not None:
                ts = later * fraud.HOUR_MS
                break
    referrer = row["referrer_id"]
    out = [] if spike is None else [alert("conversion_spike", "warning", referrer, ts, spike, referrer)]
    if act.get("r") and (found := fraud.refund_check(act, ctx.rules)) is not None:
        # a refund noted before its order's credit arrived counts from now on: the rate is
        # checked again, so arrival order does not decide whether it is seen
        evidence = {**found, "order_id": row["order_id"]}
        out.append(alert("refund_rate", "warning", referrer, row["ts"], evidence, referrer))
    return out


def on_refund(state: dict[str, Any], note: dict[str, Any], ctx: Context) -> list[Output]:
    """An order credited to this referrer was refunded (a note from the order's key)."""
    act = state.setdefault("act", {})
    if not fraud.activity_refund(act, note["order_id"]):
        return []
    found = fraud.refund_check(act, ctx.rules)
    if found is None:
        return []
    referrer = note["referrer_id"]
    evidence = {**found, "order_id": note["order_id"]}
    return [alert("refund_rate", "warning", referrer, note["ts"], evidence, referrer)]


def on_redemption(
    state: dict[str, Any], note: dict[str, Any], ctx: Context, now_s: float = 0.0, settled_before: float = math.inf
) -> list[Output]:
    """One (re)credited order that used one of this referrer's codes.

    Decides leakage for the code's 6-hour bucket and for every later bucket still open (their
    baselines include this one), and restates the untouched redemptions whose verdict
    changed; with policy ``no_commission`` they are blocked (credited, no commission). The
    verdicts depend only on the redemptions, not on the order they arrive in. Rows of
    untouched redemptions are kept (only those can ever be blocked) until their bucket is
    settled (:func:`fraud.leak_prune`)."""
    cfg = ctx.rules
    referrer, code, order_id = note["referrer_id"], note["code"], note["order_id"]
    leak = state.setdefault("codes", {}).setdefault(code, {})
    untouched = not note["touched"]
    bucket = fraud.leak_add(leak, order_id, note["ts"], untouched, note["coupon"], cfg)
    if bucket is None:
        return []  # later than any verdict it could change
    red: dict[str, Any] = state.setdefault("red", {})
    if untouched:
        red.setdefault(order_id, {"code": code, "ts": note["ts"]})
    else:
        red.pop(order_id, None)
    out: list[Output] = []
    if untouched and note["coupon"]:
        evidence = {"order_id": order_id, "referrer_domain": note.get("domain", ""), "signals": ["coupon_site"]}
        out.append(alert("code_leakage", "high", code, note["ts"], evidence, referrer, code))
    followers = ctx.followers_of(referrer)
    for b in fraud.leak_open_buckets(leak, bucket):
        out += _leak_verdict(state, referrer, code, b, fraud.leak_check(leak, b, followers, cfg), ctx)
    for oid in fraud.leak_prune(leak, cfg, now_s, settled_before):
        red.pop(oid, None)
    return out


def _leak_verdict(
    state: dict[str, Any], referrer: str, code: str, bucket: int, found: dict[str, Any] | None, ctx: Context
) -> list[Output]:
    """Alert when the bucket starts to leak (dated at the bucket's start, so a replay finds
    the same alert); restate the bucket's redemptions whose verdict changed."""
    leak = state["codes"][code]
    out: list[Output] = []
    leaking = found is not None
    if found is not None and bucket not in leak.setdefault("x", []):
        leak["x"].append(bucket)
        sample = sorted(fraud.leak_blocked(leak, bucket, True))[:20]
        evidence = {**found, "orders": sample}
        out.append(alert("code_leakage", "high", code, found["window_start_ms"], evidence, referrer, code))
    elif not leaking and bucket in leak.get("x", []):
        leak["x"].remove(bucket)
    if ctx.rules.leak_policy != "no_commission":
        return out
    blocked = fraud.leak_blocked(leak, bucket, leaking)
    red = state.get("red", {})
    for oid in sorted(leak["b"][str(bucket)]):
        entry = red.get(oid)
        if entry is None or entry["code"] != code or bool(entry.get("blocked")) == (oid in blocked):
            continue
        entry["blocked"] = oid in blocked
        for row in list(entry.get("rows", {}).values()):
            out.extend(_credit(state, row, ctx))  # restated with the new verdict
    return out
