"""How the worker packs records into messages between its agents, and reads them back."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from ripple.bench import hot_spots
from streams.batch import CHUNK_BYTES, _chunks, keyed_records


@dataclass
class Msg:
    key: bytes
    value: bytes


def test_keyed_records_reads_every_shape() -> None:
    pairs = orjson.dumps([["cr-1", {"a": 1}], ["cr-2", {"a": 2}], ["cr-1", {"a": 3}]])
    assert keyed_records(Msg(b"cr-1", pairs)) == [("cr-1", {"a": 1}), ("cr-2", {"a": 2}), ("cr-1", {"a": 3})]
    # one record, or an array of records, of the message's key (what earlier versions sent)
    assert keyed_records(Msg(b"cr-9", b'{"a": 1}')) == [("cr-9", {"a": 1})]
    assert keyed_records(Msg(b"cr-9", b'[{"a": 1}, {"a": 2}]')) == [("cr-9", {"a": 1}), ("cr-9", {"a": 2})]


def test_chunks_keep_order_and_stay_under_the_size() -> None:
    records = [(f"k{i}", orjson.dumps({"i": i, "pad": "x" * 1000})) for i in range(1000)]
    chunks = list(_chunks(records))
    assert len(chunks) > 1
    assert [r for chunk in chunks for r in chunk] == records
    for chunk in chunks:
        assert sum(len(v) + len(k) + 8 for k, v in chunk) <= CHUNK_BYTES + 1100
    # a record larger than the limit still goes, alone
    big = [("a", b"1"), ("b", b"x" * (CHUNK_BYTES + 1)), ("c", b"2")]
    assert [len(c) for c in _chunks(big)] == [1, 1, 1]


def test_hot_spots_from_collapsed_stacks() -> None:
    collapsed = "\n".join(
        [
            "main (a.py:1);run (a.py:5);decode (b.py:10) 60",
            "main (a.py:1);run (a.py:5);send (c.py:3) 30",
            "main (a.py:1);idle (d.py:9) 10",
        ]
    )
    spots = {name: (inc, own) for name, inc, own in hot_spots(collapsed)}
    assert spots["run (a.py)"] == (0.9, 0.0)
    assert spots["decode (b.py)"] == (0.6, 0.6)
    assert spots["send (c.py)"] == (0.3, 0.3)
    assert "main (a.py)" not in spots  # in every sample: says nothing
