"""The chains agent: node, removal and revenue updates per root, in order, become each
root's new state, one ``chains`` row per root and batch, and a ``viral_chain`` alert when a
chain crosses into viral (:mod:`streams.chains` holds the metrics)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streams import chains
from streams import referrer as referrer_logic
from streams.batch import Outbox, held

ALERT_EVIDENCE = ("nodes", "depth", "k_by_generation", "structural_virality")


def handle(updates: Iterable[tuple[int, str, dict[str, Any]]], table: Any, box: Outbox) -> None:
    """Apply ``(partition, root, update)`` in order to ``table`` (the roots' state) through
    ``box``; a root's ``version`` grows by one per batch that touches it."""
    touched: dict[str, tuple[int, dict[str, Any]]] = {}
    for partition, root, update in updates:
        chain, crossed = chains.apply(held(touched, table, root), update)
        touched[root] = (partition, chain)
        if crossed:
            s = chains.summary(chain)
            evidence = {k: s[k] for k in ALERT_EVIDENCE}
            box.emit([referrer_logic.alert("viral_chain", "info", root, chain["updated"], evidence, root)])
    for root, (partition, chain) in touched.items():
        chain["seq"] = chain.get("seq", 0) + 1
        box.add("chains", root, {**chains.summary(chain), "version": chain["seq"]})
        box.put(table, partition, root, chain)
