"""What the agent handler tests share: a real, unstarted Faust table, an Outbox whose
producer is never flushed (nothing is sent), and the rows it would send."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faust
import orjson

from streams.batch import Outbox
from streams.metrics import WorkerMetrics
from streams.outbound import Outbound

PARTITIONS = 4


def make_table(name: str) -> Any:
    app = faust.App(f"agent-{name}-test", broker="kafka://127.0.0.1:1", store="memory://")
    schema = faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json")
    return app.Table(name, default=None, key_type=bytes, schema=schema, partitions=PARTITIONS)


@contextmanager
def unsent() -> Iterator[Outbound]:
    out = Outbound({"bootstrap.servers": "127.0.0.1:1"})  # never flushed: nothing is sent
    try:
        yield out
    finally:
        out.close()


def box_for(table: Any, outbound: Outbound) -> Outbox:
    return Outbox(PARTITIONS, outbound, WorkerMetrics(), {id(table): table.changelog_topic.get_topic_name()}, {})


def rows(box: Outbox, topic: str) -> list[dict[str, Any]]:
    """What ``box`` would send to ``topic``, decoded."""
    return [orjson.loads(v) for (t, _), records in box.records.items() if t == topic for _, v in records]
