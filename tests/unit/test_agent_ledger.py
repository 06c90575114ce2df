"""The ledger agent's handler without a broker: a real, unstarted Faust table, a stream
clock in it and an Outbox whose producer is never flushed."""

from __future__ import annotations

from typing import Any

from agent_kit import box_for, make_table, rows

from streams.agents import ledger as ledger_agent
from streams.batch import StreamClock
from streams.outbound import Outbound

JAN = 1_767_225_600_000
DAY = 86_400_000
TERMS = "ripple-commissions"


class Kit:
    def __init__(self, outbound: Outbound) -> None:
        self.table = make_table("order_state")
        self.clock = StreamClock(self.table, "orders")
        self.handler = ledger_agent.Ledger(self.table, self.clock)
        self.outbound = outbound
        self.offsets: dict[str, int] = {}

    def item(self, topic: str, record: dict[str, Any], partition: int = 0) -> ledger_agent.Item:
        offset = self.offsets[topic] = self.offsets.get(topic, -1) + 1
        return ledger_agent.Item(topic, partition, record, [offset, 0])

    def run(self, items: list[ledger_agent.Item]) -> Any:
        box = box_for(self.table, self.outbound)
        self.handler.handle(items, box)
        return box


def terms(order_id: str = "o1", ts: int = JAN, version: int = 1) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "referrer_id": "cr-jane",
        "kind": "commission",
        "credit": 1.0,
        "amount_minor": 10_000,
        "rate": 0.1,
        "currency": "USD",
        "ts": ts,
        "hold_days": 30,
        "version": version,
    }


def refund(event_id: str, ts: int, amount: int, order_id: str = "o1") -> dict[str, Any]:
    return {"event_id": event_id, "order_id": order_id, "ts": ts, "amount_minor": amount}


def entries(box: Any) -> dict[str, tuple[int, str]]:
    return {e["kind"]: (e["commission_minor"], e["status"]) for e in rows(box, "commission_ledger")}


def test_terms_book_a_pending_commission(outbound: Outbound) -> None:
    kit = Kit(outbound)
    box = kit.run([kit.item(TERMS, terms())])
    assert entries(box) == {"commission": (1000, "pending")}
    assert kit.handler.pending == {0: {"o1": JAN + 30 * DAY}}


def test_the_hold_ends_in_event_time_when_a_later_event_passes_it(outbound: Outbound) -> None:
    kit = Kit(outbound)
    kit.run([kit.item(TERMS, terms())])
    box = kit.run([kit.item(TERMS, terms("o2", ts=JAN + 31 * DAY))])
    approved = [e for e in rows(box, "commission_ledger") if e["order_id"] == "o1"]
    assert [(e["kind"], e["status"]) for e in approved] == [("commission", "approved")]
    assert "o1" not in kit.handler.pending[0]


def test_a_refund_within_the_hold_reverses_and_tells_the_referrer(outbound: Outbound) -> None:
    kit = Kit(outbound)
    kit.run([kit.item(TERMS, terms())])
    box = kit.run([kit.item(ledger_agent.REFUNDS, refund("r1", JAN + 5 * DAY, 2500))])
    assert entries(box) == {"commission": (1000, "pending"), "reversal": (-250, "pending")}
    (note,) = rows(box, "ripple-credits")
    assert note == {"type": "refund", "referrer_id": "cr-jane", "order_id": "o1", "ts": JAN + 5 * DAY}


def test_a_refund_before_its_terms_waits_in_the_ledger(outbound: Outbound) -> None:
    kit = Kit(outbound)
    first = kit.run([kit.item(ledger_agent.REFUNDS, refund("r1", JAN, 10_000))])
    assert not rows(first, "commission_ledger")
    box = kit.run([kit.item(TERMS, terms(ts=JAN))])
    assert entries(box) == {"commission": (1000, "pending"), "reversal": (-1000, "pending")}


def test_the_pending_index_is_rebuilt_from_a_recovered_table(outbound: Outbound) -> None:
    kit = Kit(outbound)
    kit.run([kit.item(TERMS, terms())])
    restarted = ledger_agent.Ledger(kit.table, StreamClock(kit.table, "orders"))
    kit.handler = restarted
    box = kit.run([kit.item(TERMS, terms("o2", ts=JAN + 31 * DAY))])
    assert ("commission", "approved") in [(e["kind"], e["status"]) for e in rows(box, "commission_ledger")]


def test_an_event_read_again_after_a_crash_is_skipped(outbound: Outbound) -> None:
    kit = Kit(outbound)
    once = kit.item(TERMS, terms())
    kit.run([once])
    assert not rows(kit.run([once]), "commission_ledger")
