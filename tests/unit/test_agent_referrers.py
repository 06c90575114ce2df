"""The referrers agent's handler without a broker: a real, unstarted Faust table and an
Outbox whose producer is never flushed; the reference data gives plans and identities."""

from __future__ import annotations

from agent_kit import box_for, make_table, rows
from test_referrer import T, row

from streams import fraud
from streams.agents import referrers as referrer_agent
from streams.outbound import Outbound
from streams.partitioner import partition_of
from streams.reference import ReferenceData

CREDITS = "ripple-credits"


def handler() -> referrer_agent.Referrers:
    ref = ReferenceData()
    ref.apply("creators", {"creator_id": "cr-jane", "plan": {"rate": 0.1, "override_rate": 0.05}})
    ctx = referrer_agent.context(ref, "last_click", fraud.load_config())
    return referrer_agent.Referrers(make_table("referrer_state"), ctx, 4)


def test_a_creators_credit_books_a_commission_a_root_node_and_a_claim_for_its_buyer(outbound: Outbound) -> None:
    h = handler()
    box = box_for(h.table, outbound)
    h.handle([(2, CREDITS, "cr-jane", row("cr-jane", "creator", "o1", "cus-1", T))], box, settled_before=0.0)
    (node,) = rows(box, "chain_nodes")
    assert (node["node_id"], node["root_id"], node["generation"]) == ("cr-jane", "cr-jane", 0)
    claims = rows(box, referrer_agent.CLAIMS)
    assert [(c["node_id"], c["parent_id"]) for c in claims] == [("cus-1", "cr-jane")]
    (term,) = rows(box, "ripple-commissions")
    assert (term["referrer_id"], term["rate"]) == ("cr-jane", 0.1)
    assert b"cr-jane" in h.table.data
    assert not h.parked


def test_a_customers_credit_parks_until_settled_then_release_books_it(outbound: Outbound) -> None:
    h = handler()
    box = box_for(h.table, outbound)
    h.handle([(1, CREDITS, "cus-9", row("cus-9", "customer", "o3", "cus-10", T))], box, 0.0, now=100.0)
    assert h.parked == {"cus-9": 1}
    assert not rows(box, "chain_nodes")
    early = box_for(h.table, outbound)
    h.release(early, settled_before=100.0)  # a claim may still be on its way
    assert not rows(early, "chain_nodes") and h.parked
    later = box_for(h.table, outbound)
    h.release(later, settled_before=100.5)
    (node,) = rows(later, "chain_nodes")
    assert (node["node_id"], node["root_id"]) == ("cus-9", "cus-9")
    assert not h.parked
    assert "parked" not in h.table.data[b"cus-9"]


def test_parked_credits_are_found_again_in_a_recovered_table(outbound: Outbound) -> None:
    h = handler()
    home = partition_of("cus-9", 4)  # the partition the key's messages and state are in
    h.handle([(home, CREDITS, "cus-9", row("cus-9", "customer", "o3", "cus-10", T))], box_for(h.table, outbound), 0.0)
    fresh = referrer_agent.Referrers(h.table, h.ctx, 4)  # a restarted worker: the table only
    assert fresh.load_parked() == 1
    assert fresh.parked == {"cus-9": -1}
    box = box_for(h.table, outbound)
    fresh.release(box, settled_before=float("inf"))
    assert rows(box, "chain_nodes") and not fresh.parked
    changes = {(topic, partition, key) for topic, partition, key, _ in box.changes}
    assert changes == {(h.table.changelog_topic.get_topic_name(), home, b"cus-9")}


def test_a_claim_places_a_customer_under_its_parent(outbound: Outbound) -> None:
    h = handler()
    box = box_for(h.table, outbound)
    h.handle([(0, CREDITS, "cr-jane", row("cr-jane", "creator", "o1", "cus-1", T))], box, 0.0)
    (claim,) = rows(box, referrer_agent.CLAIMS)
    placed = box_for(h.table, outbound)
    h.handle([(0, referrer_agent.CLAIMS, "cus-1", claim)], placed, 0.0)
    (node,) = rows(placed, "chain_nodes")
    assert (node["node_id"], node["parent_id"], node["generation"]) == ("cus-1", "cr-jane", 1)
