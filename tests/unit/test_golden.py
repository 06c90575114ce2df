"""Golden files: tests/unit/golden/<name>.jsonl events in arrival order -> <name>.expected.jsonl.

Each expected line is the final credit of one (order, model, referrer), checked in and
reviewed by hand; ``RIPPLE_UPDATE_GOLDEN=1`` rewrites them after an intended change.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams import attribution as attr
from streams.partitioner import partition_for
from streams.reference import ReferenceData

GOLDEN = Path(__file__).parent / "golden"
W = attr.Windows(click_ms=30 * 86_400_000, view_ms=86_400_000, max_lateness_ms=600_000)


def run(path: Path) -> list[dict[str, Any]]:
    ref = ReferenceData()
    states: dict[str, attr.State] = {}
    final: dict[tuple[str, str, str], dict[str, Any]] = {}
    stream_time: dict[int, int] = {}
    for line in path.read_bytes().splitlines():
        item = orjson.loads(line)
        topic, event = item["topic"], item["event"]
        if topic == "codes":
            ref.apply(topic, event)
            continue
        state = states.setdefault(event["visitor_id"], attr.new_state())
        partition = partition_for(event["visitor_id"].encode(), 8)  # stream time is per partition, as in the agent
        now = stream_time.get(partition, 0)
        for order, result in attr.handle_event(topic, event, state, now, W, ref, "code_wins"):
            for row in attr.rows_for(order, result, ref):
                key = (row["order_id"], row["model"], row["referrer_id"])
                if key not in final or final[key]["version"] <= row["version"]:
                    final[key] = row
        stream_time[partition] = max(now, event["ts"])
    return [
        {
            "order_id": o,
            "model": m,
            "referrer_id": r,
            "credit": round(row["credit"], 12),
            "touch_type": row["touch_type"],
        }
        for (o, m, r), row in sorted(final.items())
        if row["credit"] > 0
    ]


INPUTS = [p for p in sorted(GOLDEN.glob("*.jsonl")) if not p.name.endswith(".expected.jsonl")]


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    expected_path = path.with_name(path.stem + ".expected.jsonl")
    got = run(path)
    if os.environ.get("RIPPLE_UPDATE_GOLDEN") == "1":
        expected_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in got))
    expected = [orjson.loads(line) for line in expected_path.read_bytes().splitlines()]
    assert [(r["order_id"], r["model"], r["referrer_id"], r["touch_type"]) for r in got] == [
        (r["order_id"], r["model"], r["referrer_id"], r["touch_type"]) for r in expected
    ]
    for g, e in zip(got, expected, strict=True):
        assert math.isclose(g["credit"], e["credit"], abs_tol=1e-9), (g, e)
