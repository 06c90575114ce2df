"""What happens at a referrer's key: credits in; attributions, commission terms, lineage,
chain updates and alerts out. Pure logic over the referrer's JSON-able state.

State: ``{"m": monthly book, "seq": n, "lin": lineage}`` (see :mod:`streams.commission`
and :mod:`streams.lineage`). Every output is a ``(topic, key, value)`` triple.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from streams import commission as comm
from streams import lineage

Output = tuple[str, str, dict[str, Any]]
BLOCKING_RULES = ("referral_ring", "self_referral")


def new_state() -> dict[str, Any]:
    return comm.new_book()


def alert(
    rule: str, severity: str, referrer_id: str, ts: int, evidence: dict[str, Any], subject: str, code: str = ""
) -> Output:
    alert_id = f"{rule}:{referrer_id}:{subject}"
    return (
        "alerts",
        alert_id,
        {
            "alert_id": alert_id,
            "ts": ts,
            "rule": rule,
            "severity": severity,
            "referrer_id": referrer_id,
            "code": code,
            "evidence": orjson.dumps(evidence).decode(),
        },
    )


#: how long (wall clock) a customer's referral credits wait for the customer's own claim
#: before the customer starts a tree of its own
CLAIM_WAIT_S = 3.0


def on_credit(
    state: dict[str, Any],
    row: dict[str, Any],
    plan_of: Callable[[str], comm.Plan],
    identities_of: Callable[[str], list[str]],
    commission_model: str,
    now_s: float = 0.0,
) -> list[Output]:
    """One credit row (any model) for the referrer whose state this is.

    A customer is a referrer before it is a node only when it really referred someone
    before its own first credited order. Its claim travels one hop more than its friends'
    orders, so a customer without a place parks its credits until the claim arrives, or
    ``CLAIM_WAIT_S`` passes and it becomes a root.
    """
    if state.get("lin") is None and row["referrer_type"] == "customer":
        parked = state.setdefault("parked", {"until": now_s + CLAIM_WAIT_S, "rows": []})
        parked["rows"].append(row)
        return []
    return _credit(state, row, plan_of, identities_of, commission_model)


def release(
    state: dict[str, Any],
    plan_of: Callable[[str], comm.Plan],
    identities_of: Callable[[str], list[str]],
    commission_model: str,
    now_s: float | None = None,
) -> list[Output]:
    """Credit the parked rows once the customer has a place, or its wait is over."""
    parked = state.get("parked")
    if parked is None or (state.get("lin") is None and now_s is not None and now_s < parked["until"]):
        return []
    del state["parked"]
    out: list[Output] = []
    for row in parked["rows"]:
        out.extend(_credit(state, row, plan_of, identities_of, commission_model))
    return out


def _credit(
    state: dict[str, Any],
    row: dict[str, Any],
    plan_of: Callable[[str], comm.Plan],
    identities_of: Callable[[str], list[str]],
    commission_model: str,
) -> list[Output]:
    referrer = row["referrer_id"]
    plan = plan_of(referrer)
    out: list[Output] = []
    lin, new_root = lineage.ensure_lineage(state, referrer, identities_of(referrer))
    if new_root:
        node = {
            "node_id": referrer,
            "parent_id": "",
            "root_id": referrer,
            "generation": 0,
            "ts": row["ts"],
            "version": 0,
        }
        out.append(("chain_nodes", referrer, node))
        out.append(("ripple-chains", referrer, {"type": "root", **node}))
    seq = comm.next_seq(state)
    row = {**row, "root_creator_id": lin["root"], "generation": lin["gen"], "status": "ok", "reasons": []}
    rule = lineage.identity_match(lin, row.get("identities") or []) if row["credit"] > 0 else None
    if rule is not None:
        row["status"], row["reasons"] = "blocked", [rule]
    if row["model"] != commission_model:
        rate = 0.0 if rule else plan.rate
        out.append(
            (
                "attributions",
                row["order_id"],
                {
                    **row,
                    "commission_minor": round(row["credit"] * row["amount_minor"] * rate),
                    "version": (row["version"] << 32) | seq,
                },
            )
        )
        return out

    if rule is not None:
        severity = "high" if rule == "referral_ring" else "warning"
        out.append(
            alert(
                rule,
                severity,
                referrer,
                row["ts"],
                {
                    "order_id": row["order_id"],
                    "customer_id": row.get("customer_id", ""),
                    "matched": sorted(set(row.get("identities") or []) & set(lin["own"] + lin["anc"])),
                    "root_id": lin["root"],
                },
                row["order_id"],
            )
        )
    elif row["credit"] > 0 and row.get("customer_id"):
        claim = lineage.claim_for(referrer, lin, row)
        out.append(("ripple-lineage", claim["node_id"], claim))
        lin["used"] = True  # it has referred someone: its own place is fixed from now on

    # blocked orders earn nothing and do not count towards tiers
    book_row = {**row, "credit": 0.0} if rule else row
    new_month, changed = comm.book_order(state, book_row, plan)
    if new_month:
        fee = comm.flat_fee_entry(referrer, comm.month_of(row["ts"]), plan, row["currency"])
        if fee is not None:
            out.append(("commission_ledger", fee["entry_id"], fee))
    for order_id, b in changed:
        credit, amount, rate = b[comm.B_CREDIT], b[comm.B_AMOUNT], b[comm.B_RATE]
        version = (b[comm.B_VERSION] << 32) | seq
        shown = row if order_id == row["order_id"] else {**b[comm.B_ROW], "credit": credit}
        out.append(
            (
                "attributions",
                order_id,
                {
                    "order_id": order_id,
                    "model": row["model"],
                    "referrer_id": referrer,
                    **b[comm.B_ROW],
                    "status": shown["status"],
                    "reasons": shown["reasons"],
                    "credit": shown["credit"],
                    "revenue_minor": round(shown["credit"] * amount),
                    "commission_minor": round(credit * amount * rate),
                    "currency": b[comm.B_CURRENCY],
                    "version": version,
                    "ts": b[comm.B_TS],
                },
            )
        )
        terms = {
            "order_id": order_id,
            "referrer_id": referrer,
            "credit": credit,
            "amount_minor": amount,
            "rate": rate,
            "currency": b[comm.B_CURRENCY],
            "ts": b[comm.B_TS],
            "hold_days": plan.hold_days,
            "version": version,
            "kind": "commission",
        }
        out.append(("ripple-commissions", order_id, terms))
        if lin["parent"]:
            parent_plan = plan_of(lin["parent"])
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
                    "ts": b[comm.B_TS],
                },
            )
        )
    comm.prune_book(state, row["ts"])
    return out


def on_claim(state: dict[str, Any], claim: dict[str, Any]) -> list[Output]:
    """A claim to make this customer a node (or move it to an earlier parent)."""
    node, previous = lineage.apply_claim(state, claim)
    if node is None:
        return []
    version = comm.next_seq(state)
    out: list[Output] = [
        ("chain_nodes", node["node_id"], {**node, "version": version}),
        ("ripple-chains", node["root_id"], {"type": "node", **node}),
    ]
    if previous is not None:
        out.insert(1, ("ripple-chains", previous["root_id"], {"type": "remove", **previous, "ts": claim["ts"]}))
    return out
