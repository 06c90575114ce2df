"""The chains agent's handler without a broker: a real Faust table (never started) and a
real Outbox whose producer is never flushed; what it would send is read from the Outbox."""

from __future__ import annotations

from typing import Any

import pytest
from agent_kit import box_for, make_table, rows

from streams.agents import chains as chain_agent
from streams.outbound import Outbound

ROOT = "cr-jane"


@pytest.fixture
def table() -> Any:
    return make_table("chain_state")


def node(node_id: str, parent: str, ts: int) -> dict[str, Any]:
    return {"type": "node", "root_id": ROOT, "node_id": node_id, "parent_id": parent, "ts": ts}


def test_nodes_in_any_order_make_one_row_per_root_and_batch(table: Any, outbound: Outbound) -> None:
    box = box_for(table, outbound)
    # a grandchild before its parent: it waits as an orphan and is adopted in the same batch
    chain_agent.handle([(1, ROOT, node("c2", "c1", 20)), (1, ROOT, node("c1", ROOT, 10))], table, box)
    (row,) = rows(box, "chains")
    assert (row["root_id"], row["nodes"], row["depth"], row["version"]) == (ROOT, 3, 2, 1)
    assert table.data[ROOT.encode()]["n"] == 3
    assert [c[:2] for c in box.changes] == [(table.changelog_topic.get_topic_name(), 1)]

    again = box_for(table, outbound)
    chain_agent.handle([(1, ROOT, node("c3", ROOT, 30))], table, again)
    (row,) = rows(again, "chains")
    assert (row["nodes"], row["version"]) == (4, 2)


def test_a_replayed_batch_changes_no_count(table: Any, outbound: Outbound) -> None:
    batch = [(0, ROOT, node("a", ROOT, 1)), (0, ROOT, node("b", "a", 2))]
    chain_agent.handle(batch, table, box_for(table, outbound))
    replay = box_for(table, outbound)
    chain_agent.handle(batch, table, replay)  # read again after a crash
    (row,) = rows(replay, "chains")
    assert row["nodes"] == 3
    assert row["version"] == 2  # a higher version with the same content: the replay collapses


def test_a_chain_turning_viral_is_alerted_once(table: Any, outbound: Outbound) -> None:
    path = [(2, ROOT, node(f"n{i}", f"n{i - 1}" if i else ROOT, 1000 + i)) for i in range(80)]
    box = box_for(table, outbound)
    chain_agent.handle(path, table, box)
    alerts = rows(box, "ripple-alerts")
    assert len(alerts) == 1
    assert alerts[0]["rule"] == "viral_chain"
    assert set(alerts[0]["evidence"]) == set(chain_agent.ALERT_EVIDENCE)
    more = box_for(table, outbound)
    chain_agent.handle([(2, ROOT, node("n80", "n79", 2000))], table, more)
    assert rows(more, "ripple-alerts") == []  # still viral: no second alert
