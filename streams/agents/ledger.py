"""The ledger agent: refunds and commission terms per order, taken in event-time order per
task (:mod:`streams.ordering`), become ``commission_ledger`` entries (pending, approved once
the hold has passed in event time, clawed back by refunds) and refund notes to the
referrers whose commission a refund touches (:mod:`streams.commission` decides)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streams import commission as comm
from streams.batch import Outbox, StreamClock, held

REFUNDS = "refunds"


@dataclass
class Item:
    """A refund (a decoded raw event) or a commission term, at ``position`` ([offset, index
    in its message]) of its partition."""

    topic: str
    partition: int
    record: dict[str, Any]
    position: list[int]


def items(msg: Any, records: list[dict[str, Any]]) -> list[tuple[int, Item]]:
    """The ``(ts, item)`` events of a refunds or commission-terms message."""
    return [(r["ts"], Item(msg.topic, msg.partition, r, [msg.offset, i])) for i, r in enumerate(records)]


def refund_notes(order_id: str, ledger: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(referrer, note)`` for each referrer whose commission on the order a refund touches
    (their refund rates are kept at their keys)."""
    if not ledger["r"]:
        return []
    refund_ts = max(r.ts for r in ledger["r"].values())
    notes = []
    for key, terms in ledger["c"].items():
        referrer_id, _, kind = key.rpartition("|")
        if kind == "commission" and terms.credit > 0:
            notes.append(
                (referrer_id, {"type": "refund", "referrer_id": referrer_id, "order_id": order_id, "ts": refund_ts})
            )
    return notes


class Ledger:
    """The handler over ``table`` (each order's ledger) and ``clock`` (each partition's
    stream time and handled positions); keeps the index of ledgers waiting for their hold."""

    def __init__(self, table: Any, clock: StreamClock) -> None:
        self.table = table
        self.clock = clock
        self.pending: dict[int, dict[str, int]] = {}  # partition -> order_id -> hold end (event time)
        self.pending_loaded: set[int] = set()

    def forget(self) -> None:
        """The table was recovered for a new assignment: rebuild the index when next needed."""
        self.pending_loaded.clear()

    def handle(self, items: Iterable[Item], box: Outbox) -> None:
        """Apply ``items`` (in event-time order) through ``box``."""
        clock = self.clock
        partitions: set[int] = set()
        touched: dict[str, tuple[int, dict[str, Any]]] = {}
        changed: set[str] = set()
        for item in items:
            partitions.add(item.partition)
            if clock.replayed(item.topic, item.partition, item.position):
                continue  # handled before a crash: its effect is in the restored state
            order_id = item.record["order_id"]
            ledger = held(touched, self.table, order_id) or comm.new_ledger(item.partition)
            touched[order_id] = (item.partition, ledger)
            if item.topic == REFUNDS:
                if comm.ledger_add_refund(ledger, item.record):
                    changed.add(order_id)
            elif comm.ledger_set_commission(ledger, item.record):
                changed.add(order_id)
            clock.advance(item.partition, item.topic, item.position, item.record["ts"])
        for partition in {p for p, _ in touched.values()}:
            for order_id in self.due(partition):
                ledger = held(touched, self.table, order_id)
                if ledger is None:
                    continue
                ledger["approved"] = True
                touched[order_id] = (partition, ledger)
                changed.add(order_id)
        for order_id in sorted(changed):
            partition, ledger = touched[order_id]
            if ledger["c"]:
                for e in comm.ledger_entries(order_id, ledger):
                    box.add("commission_ledger", e["entry_id"], e)
                end = comm.hold_end(ledger)
                if not ledger["approved"] and end is not None:
                    self.pending.setdefault(partition, {})[order_id] = end
                for referrer_id, note in refund_notes(order_id, ledger):
                    box.add("ripple-credits", referrer_id, note)
        for order_id, (partition, ledger) in touched.items():
            box.put(self.table, partition, order_id, ledger)
        clock.persist(partitions, box)

    def due(self, partition: int) -> list[str]:
        """The orders of ``partition`` whose hold has passed at its stream time (taken out
        of the index)."""
        if partition not in self.pending_loaded:
            # after a start or a rebalance: rebuild the index from the recovered table
            self.pending_loaded.add(partition)
            for key, ledger in list(self.table.data.items()):
                if isinstance(ledger, dict) and ledger.get("p") == partition and not ledger.get("approved"):
                    end = comm.hold_end(ledger)
                    if end is not None:
                        self.pending.setdefault(partition, {})[key.decode()] = end
        now = self.clock.get(partition)
        due = [o for o, end in self.pending.get(partition, {}).items() if end <= now]
        for o in due:
            del self.pending[partition][o]
        return due
