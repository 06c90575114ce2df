"""Faust's commit of acknowledged offsets, as streams.faust_fixes corrects it, on a real,
unstarted consumer: a record not acknowledged yet just before a run of acknowledged ones
is never committed past (faust-streaming 0.15 took the committed offset for the last one
read, and checked nothing before its first commit)."""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TP

from streams import faust_fixes
from streams.topics import COMPACTED_TOPICS

ORDERS = TP("orders", 0)
CODES = TP("codes", 0)


def consumer() -> Any:
    faust_fixes.install(COMPACTED_TOPICS)
    return faust.App("faust-fixes-test", broker="kafka://127.0.0.1:1").consumer


def test_a_run_from_the_next_offset_to_read_is_committed() -> None:
    c = consumer()
    c._committed_offset[ORDERS] = 51
    c._acked[ORDERS].extend([51, 52, 53])
    assert c._new_offset(ORDERS) == 54


def test_a_missing_record_just_after_the_committed_offset_stops_the_commit() -> None:
    c = consumer()
    c._committed_offset[ORDERS] = 51  # the next offset to read: 51 is not acknowledged
    c._acked[ORDERS].extend([52, 53])
    assert c._new_offset(ORDERS) is None
    c._acked[ORDERS].append(51)  # it came again and was handled
    assert c._new_offset(ORDERS) == 54


def test_before_the_first_commit_the_run_must_start_where_the_partition_was_sought() -> None:
    c = consumer()
    c._ripple_base = {ORDERS: 51}
    c._acked[ORDERS].extend([52, 53])
    assert c._new_offset(ORDERS) is None
    c._acked[ORDERS].append(51)
    assert c._new_offset(ORDERS) == 54


def test_a_compacted_topic_keeps_fausts_own_handling() -> None:
    c = consumer()
    c._committed_offset[CODES] = 10
    c._acked[CODES].extend([11, 12])  # a gap is legitimate in a compacted topic
    assert c._new_offset(CODES) == 13
