"""The referrers agent: credits and notes (``ripple-credits``) and lineage claims
(``ripple-lineage``) per referrer become attributions, commission terms, chain updates,
leakage, refund-rate and spike alert candidates (:mod:`streams.referrer` decides).

A customer's credits wait ("parked") until its place in a chain is settled: no claim can
still be on its way (:class:`streams.settle.Settled`); :meth:`Referrers.release` books them
then."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from streams import commission as comm
from streams import fraud, lineage
from streams import referrer as referrer_logic
from streams.batch import Outbox, held
from streams.partitioner import partition_of
from streams.reference import ReferenceData

CLAIMS = "ripple-lineage"


def context(reference: ReferenceData, commission_model: str, rules: fraud.FraudConfig) -> referrer_logic.Context:
    """What a referrer's logic reads from the reference data: plans, creators' identities
    (self-referral) and followers."""

    def plan_of(referrer_id: str) -> comm.Plan:
        return comm.plan_from(reference.plan(referrer_id))

    def identities_of(referrer_id: str) -> list[str]:
        creator = reference.creators.get(referrer_id)
        return lineage.creator_identities(creator) if creator else []

    def followers_of(referrer_id: str) -> int | None:
        creator = reference.creators.get(referrer_id)
        followers = creator.get("followers") if creator else None
        return int(followers) if isinstance(followers, int) else None

    return referrer_logic.Context(plan_of, identities_of, commission_model, rules, followers_of)


class Referrers:
    """The handler over ``table`` (each referrer's book) and the referrers whose credits are
    parked (key -> partition of its state; -1 when found in a recovered table)."""

    def __init__(self, table: Any, ctx: referrer_logic.Context, partitions: int) -> None:
        self.table = table
        self.ctx = ctx
        self.partitions = partitions
        self.parked: dict[str, int] = {}
        self.parked_loaded = False

    def handle(
        self,
        updates: Iterable[tuple[int, str, str, dict[str, Any]]],
        box: Outbox,
        settled_before: float,
        now: float | None = None,
    ) -> None:
        """Apply ``(partition, topic, referrer, record)`` in order through ``box``."""
        now = time.time() if now is None else now
        touched: dict[str, tuple[int, dict[str, Any]]] = {}
        for partition, topic, key, one in updates:
            state = held(touched, self.table, key) or referrer_logic.new_state()
            touched[key] = (partition, state)
            if topic == CLAIMS:
                box.emit(lineage.on_claim(state, one, now))
            else:
                box.emit(referrer_logic.on_credit(state, one, self.ctx, now, settled_before))
            if "parked" in state:
                self.parked[key] = partition
        for key, (partition, state) in touched.items():
            box.put(self.table, partition, key, state)

    def forget_parked(self) -> None:
        """The table was recovered for a new assignment: look for parked credits again."""
        self.parked_loaded = False

    def load_parked(self) -> int:
        """After a start or a recovery, find the parked credits in the table; how many wait."""
        if not self.parked_loaded:
            self.parked_loaded = True
            for key, state in list(self.table.data.items()):
                if isinstance(state, dict) and "parked" in state:
                    self.parked.setdefault(key.decode(), -1)
        return len(self.parked)

    def release(self, box: Outbox, settled_before: float) -> None:
        """Book what was parked before ``settled_before``.

        Customers with a place first: booking their credits sends claims to their friends;
        one without a place may become a root only once no parked referrer (on any worker)
        holds it — a hold ends after the claim it may bring (:func:`streams.lineage.holds`)."""
        states = {key: self.table.data.get(key.encode()) for key in self.parked}
        for key, partition in sorted(self.parked.items(), key=lambda kv: "lin" not in (states[kv[0]] or {})):
            state = states[key]
            if state is None or "parked" not in state:
                self.parked.pop(key, None)
                continue
            if "lin" not in state and lineage.holds(state):
                continue
            outputs = referrer_logic.release(state, self.ctx, settled_before)
            if outputs or "parked" not in state:
                box.emit(outputs)
                self.parked.pop(key, None)
                p = partition if partition >= 0 else partition_of(key, self.partitions)
                box.put(self.table, p, key, state)
