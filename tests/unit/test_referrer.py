"""What happens at a referrer's key (streams/referrer.py), without Kafka."""

from __future__ import annotations

from typing import Any

from streams import commission as comm
from streams import lineage
from streams import referrer as ref

T = 1_767_225_600_000
PLANS = {"cr-jane": comm.plan_from({"rate": 0.1, "override_rate": 0.05})}


def plan_of(referrer_id: str) -> comm.Plan:
    return PLANS.get(referrer_id, comm.plan_from({}))


def identities_of(referrer_id: str) -> list[str]:
    return ["h:jane-card"] if referrer_id == "cr-jane" else []


CTX = ref.Context(plan_of, identities_of, "last_click")


def row(
    referrer: str,
    rtype: str,
    order_id: str,
    customer: str,
    ts: int,
    ids: list[str] | None = None,
    model: str = "last_click",
    credit: float = 1.0,
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "model": model,
        "referrer_id": referrer,
        "referrer_type": rtype,
        "root_creator_id": "",
        "touch_type": "click",
        "touch_event_id": "c",
        "credit": credit,
        "revenue_minor": 10_000,
        "commission_minor": 0,
        "currency": "USD",
        "ctot_ms": 1,
        "status": "ok",
        "reasons": [],
        "generation": 0,
        "version": 2,
        "ts": ts,
        "amount_minor": 10_000,
        "customer_id": customer,
        "identities": ids or [f"h:{customer}-card"],
    }


def credit(state: dict[str, Any], r: dict[str, Any], now: float = 0.0) -> list[ref.Output]:
    return ref.on_credit(state, r, CTX, now)


def by_topic(out: list[ref.Output], topic: str) -> list[dict[str, Any]]:
    return [v for t, _, v in out if t == topic]


def test_a_creator_becomes_a_root_and_its_buyer_gets_a_claim() -> None:
    jane: dict[str, Any] = ref.new_state()
    out = credit(jane, row("cr-jane", "creator", "o1", "cus-1", T))
    assert by_topic(out, "chain_nodes")[0] == {
        "node_id": "cr-jane",
        "parent_id": "",
        "root_id": "cr-jane",
        "generation": 0,
        "ts": T,
        "version": 0,
        "active": 1,
    }
    claim = by_topic(out, "ripple-lineage")[0]
    assert (claim["node_id"], claim["parent_id"], claim["root_id"], claim["generation"]) == (
        "cus-1",
        "cr-jane",
        "cr-jane",
        1,
    )
    assert claim["anc"] == ["h:jane-card"]
    attribution = by_topic(out, "attributions")[0]
    assert (attribution["root_creator_id"], attribution["generation"], attribution["commission_minor"]) == (
        "cr-jane",
        0,
        1000,
    )


def test_a_customer_parks_its_credits_until_its_own_claim() -> None:
    jane: dict[str, Any] = ref.new_state()
    claim = by_topic(credit(jane, row("cr-jane", "creator", "o1", "cus-1", T)), "ripple-lineage")[0]
    cus1: dict[str, Any] = ref.new_state()
    parked = credit(cus1, row("cus-1", "customer", "o2", "cus-2", T + 10), now=100.0)
    assert parked == [("ripple-lineage", "cus-2", {"type": "hold", "node_id": "cus-2", "by": "cus-1 o2"})]
    node_out = lineage.on_claim(cus1, claim)
    assert by_topic(node_out, "chain_nodes")[0]["parent_id"] == "cr-jane"
    released = ref.release(cus1, CTX)
    claim2 = by_topic(released, "ripple-lineage")[0]
    assert (claim2["root_id"], claim2["generation"], claim2["parent_id"]) == ("cr-jane", 2, "cus-1")
    # the friend is told the wait is over after its claim, in the same partition's order
    to_friend = [(v["type"], v.get("by")) for t, k, v in released if t == "ripple-lineage" and k == "cus-2"]
    assert to_friend == [("claim", None), ("unhold", "cus-1 o2")]
    # the parent of cus-1 earns an override on cus-1's referral
    overrides = [v for v in by_topic(released, "ripple-commissions") if v["kind"] == "override"]
    assert [(o["referrer_id"], o["rate"]) for o in overrides] == [("cr-jane", 0.05)]


def test_a_customer_without_a_claim_becomes_a_root_once_settled() -> None:
    cus: dict[str, Any] = ref.new_state()
    credit(cus, row("cus-9", "customer", "o3", "cus-10", T), now=100.0)
    assert ref.release(cus, CTX, settled_before=100.0) == []  # a claim may still be on its way
    out = ref.release(cus, CTX, settled_before=100.5)
    assert by_topic(out, "chain_nodes")[0]["root_id"] == "cus-9"
    assert "parked" not in cus


def test_an_earlier_claim_moves_a_node_until_it_refers_someone() -> None:
    cus: dict[str, Any] = ref.new_state()
    late = {
        "node_id": "cus-1",
        "parent_id": "cr-leo",
        "root_id": "cr-leo",
        "generation": 1,
        "anc": [],
        "own": [],
        "ts": T + 100,
        "order_id": "o9",
        "version": 2,
    }
    early = {**late, "parent_id": "cr-jane", "root_id": "cr-jane", "ts": T, "order_id": "o1"}
    lineage.on_claim(cus, late)
    moved = lineage.on_claim(cus, early)
    assert by_topic(moved, "chain_nodes")[0]["parent_id"] == "cr-jane"
    assert [v["type"] for v in by_topic(moved, "ripple-chains")] == ["remove", "node"]
    credit(cus, row("cus-1", "customer", "o5", "cus-5", T + 200))  # cus-1 refers someone: fixed
    assert lineage.on_claim(cus, {**early, "ts": T - 1}) == []


def test_an_order_paid_with_an_ancestors_card_is_a_blocked_ring() -> None:
    jane: dict[str, Any] = ref.new_state()
    claim = by_topic(credit(jane, row("cr-jane", "creator", "o1", "cus-1", T)), "ripple-lineage")[0]
    cus1: dict[str, Any] = ref.new_state()
    lineage.on_claim(cus1, claim)
    out = credit(cus1, row("cus-1", "customer", "o2", "cus-2", T + 10, ids=["h:jane-card"]))
    attribution = by_topic(out, "attributions")[0]
    assert (attribution["status"], attribution["reasons"], attribution["commission_minor"]) == (
        "blocked",
        ["referral_ring"],
        0,
    )
    assert by_topic(out, "ripple-alerts")[0]["rule"] == "referral_ring"
    assert by_topic(out, "ripple-lineage") == []  # a ring earns no place in the tree
    own = credit(cus1, row("cus-1", "customer", "o3", "cus-3", T + 20, ids=["h:cus-1-card"]))
    assert by_topic(own, "attributions")[0]["reasons"] == ["self_referral"]


def test_a_customer_whose_credited_order_lost_its_credit_is_no_node_or_moves_to_its_next_order() -> None:
    jane: dict[str, Any] = ref.new_state()
    first = by_topic(credit(jane, row("cr-jane", "creator", "o1", "cus-1", T)), "ripple-lineage")[0]
    later = by_topic(credit(jane, row("cr-jane", "creator", "o2", "cus-1", T + 50)), "ripple-lineage")[0]
    cus: dict[str, Any] = ref.new_state()
    lineage.on_claim(cus, first)
    lineage.on_claim(cus, later)
    # o1 is restated to nobody (its click was part of a flood): jane's zero row retracts it
    lost = {**row("cr-jane", "creator", "o1", "cus-1", T, credit=0.0), "version": 3}
    [retract] = by_topic(credit(jane, lost), "ripple-lineage")
    assert retract["type"] == "retract"
    moved = lineage.on_claim(cus, retract)
    assert [(v["node_id"], v["ts"], v["active"]) for v in by_topic(moved, "chain_nodes")] == [("cus-1", T + 50, 1)]
    # o2 goes too: the customer is a node no more, and leaves its tree
    lost2 = {**row("cr-jane", "creator", "o2", "cus-1", T + 50, credit=0.0), "version": 3}
    gone = lineage.on_claim(cus, by_topic(credit(jane, lost2), "ripple-lineage")[0])
    assert [v["active"] for v in by_topic(gone, "chain_nodes")] == [0]
    assert [v["type"] for v in by_topic(gone, "ripple-chains")] == ["remove"]
    assert "lin" not in cus
    # a stale retraction (an older version than the claim it names) changes nothing
    again = by_topic(credit(jane, {**row("cr-jane", "creator", "o3", "cus-1", T + 60), "version": 5}), "ripple-lineage")
    lineage.on_claim(cus, again[0])
    assert lineage.on_claim(cus, {**retract, "order_id": "o3", "version": 4}) == []


def test_a_claim_behind_its_retraction_changes_nothing() -> None:
    """After a restart a referrer can send an order's claim again behind the retraction
    that voided it (or a retraction can overtake its claim): the retraction stands until
    the order is credited again with a newer version."""
    jane: dict[str, Any] = ref.new_state()
    claim = by_topic(credit(jane, row("cr-jane", "creator", "o1", "cus-1", T)), "ripple-lineage")[0]
    lost = {**row("cr-jane", "creator", "o1", "cus-1", T, credit=0.0), "version": claim["version"]}
    [retract] = by_topic(credit(jane, lost), "ripple-lineage")
    cus: dict[str, Any] = ref.new_state()
    lineage.on_claim(cus, claim)
    gone = lineage.on_claim(cus, retract)
    assert [v["active"] for v in by_topic(gone, "chain_nodes")] == [0]
    assert lineage.on_claim(cus, claim) == []  # the replayed claim
    assert "lin" not in cus
    late: dict[str, Any] = ref.new_state()
    assert lineage.on_claim(late, retract) == []  # the retraction first, then its claim
    assert lineage.on_claim(late, claim) == [] and "lin" not in late
    # restated to another referrer: that claim carries the retraction's version and counts
    moved = {**claim, "parent_id": "cr-leo", "root_id": "cr-leo"}
    assert [v["parent_id"] for v in by_topic(lineage.on_claim(late, moved), "chain_nodes")] == ["cr-leo"]
    # credited again, with a newer version: a node again
    again = {**claim, "version": claim["version"] + 1}
    assert [v["active"] for v in by_topic(lineage.on_claim(cus, again), "chain_nodes")] == [1]


def test_a_customers_credits_wait_until_its_place_is_settled() -> None:
    jane: dict[str, Any] = ref.new_state()
    leo: dict[str, Any] = ref.new_state()
    first = by_topic(credit(jane, row("cr-jane", "creator", "o1", "cus-1", T)), "ripple-lineage")[0]
    cus: dict[str, Any] = ref.new_state()
    lineage.on_claim(cus, first, now_s=10.0)
    # cus-1 refers a friend at 11 s, but its place (from 10 s) is not settled before 10 s
    waiting = ref.on_credit(cus, row("cus-1", "customer", "o2", "cus-2", T + 10), CTX, 11.0, settled_before=9.0)
    assert [(t, v["type"]) for t, _, v in waiting] == [("ripple-lineage", "hold")]
    # o1 is restated to leo: its claim moves cus-1 while the friend's credit waits
    moved_claim = by_topic(credit(leo, {**row("cr-leo", "creator", "o1", "cus-1", T), "version": 3}), "ripple-lineage")
    moved = lineage.on_claim(cus, moved_claim[0], now_s=12.0)
    assert by_topic(moved, "chain_nodes")[0]["parent_id"] == "cr-leo"
    assert ref.release(cus, CTX, settled_before=11.5) == []  # moved at 12 s: not settled yet
    out = ref.release(cus, CTX, settled_before=12.5)
    claim2 = by_topic(out, "ripple-lineage")[0]
    assert (claim2["root_id"], claim2["generation"], claim2["parent_id"]) == ("cr-leo", 2, "cus-1")


def test_a_parked_referrer_holds_its_friend_until_its_claim_has_been_sent() -> None:
    # cus-1 waits for its own place; cus-2 bought through cus-1 and refers cus-3 itself
    cus1: dict[str, Any] = ref.new_state()
    cus2: dict[str, Any] = ref.new_state()
    hold = credit(cus1, row("cus-1", "customer", "o2", "cus-2", T), now=100.0)
    assert credit(cus2, row("cus-2", "customer", "o3", "cus-3", T + 10), now=100.0)  # parked, holds cus-3
    for _, _, note in hold:
        lineage.on_claim(cus2, note)
    assert lineage.holds(cus2)
    # an uncounted row (another model, no credit) neither holds nor unholds
    assert credit(cus1, row("cus-1", "customer", "o9", "cus-2", T, model="linear"), now=100.0) == []
    released = ref.release(cus1, CTX, settled_before=101.0)  # cus-1 becomes a root
    for topic, key, value in released:
        if topic == "ripple-lineage" and key == "cus-2":
            lineage.on_claim(cus2, value, now_s=102.0)
    assert not lineage.holds(cus2) and "holds" not in cus2
    assert cus2["lin"]["parent"] == "cus-1"
    # a repeated hold or unhold (a replay) changes nothing more
    lineage.on_claim(cus2, {"type": "unhold", "node_id": "cus-2", "by": "cus-1 o2"})
    assert not lineage.holds(cus2)
