"""The chains agent's handler without a broker: a real Faust table (never started) and a
real Outbox whose producer is never flushed; what it would send is read from the Outbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faust
import orjson
import pytest

from ripple.metrics import WorkerMetrics
from streams.agents import chains as chain_agent
from streams.batch import Outbox
from streams.outbound import Outbound

PARTITIONS = 4
ROOT = "cr-jane"


@pytest.fixture
def table() -> Any:
    app = faust.App("agent-chains-test", broker="kafka://127.0.0.1:1", store="memory://")
    return app.Table(
        "chain_state",
        default=None,
        key_type=bytes,
        schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json"),
        partitions=PARTITIONS,
    )


@pytest.fixture
def outbound() -> Iterator[Outbound]:
    out = Outbound({"bootstrap.servers": "127.0.0.1:1"})  # never flushed: nothing is sent
    yield out
    out.close()


def box_for(table: Any, outbound: Outbound) -> Outbox:
    changelogs = {id(table): table.changelog_topic.get_topic_name()}
    return Outbox(PARTITIONS, outbound, WorkerMetrics(), changelogs, {})


def rows(box: Outbox, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(v) for (t, _), records in box.records.items() if t == topic for _, v in records]


def node(node_id: str, parent: str, ts: int) -> dict[str, Any]:
    return {"type": "node", "root_id": ROOT, "node_id": node_id, "parent_id": parent, "ts": ts}


def test_nodes_in_any_order_make_one_row_per_root_and_batch(table: Any, outbound: Outbound) -> None:
    box = box_for(table, outbound)
    # a grandchild before its parent: it waits as an orphan and is adopted in the same batch
    chain_agent.handle([(1, ROOT, node("c2", "c1", 20)), (1, ROOT, node("c1", ROOT, 10))], table, box)
    (row,) = rows(box, "chains")
    assert (row["root_id"], row["nodes"], row["depth"], row["version"]) == (ROOT, 3, 2, 1)
    assert table.data[ROOT.encode()]["n"] == 3
    assert [c[:2] for c in box.changes] == [("agent-chains-test-chain_state-changelog", 1)]

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
