"""The state records: named, typed, in the compact encoding of before, versioned.

A changelog record written before the records had names (plain JSON lists, no ``"v"``)
must still load, so a worker upgraded in place recovers its state; one of a newer format
must stop the recovery instead of being read wrongly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams import attribution as attr
from streams import commission as comm
from streams.records import (
    FORMAT,
    Block,
    Booking,
    NewerFormat,
    Refund,
    RetainedOrder,
    StateCodec,
    Terms,
    Touch,
    VisitorState,
    encode,
    load,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_780_000_000_000
W = attr.Windows(click_ms=7 * 86_400_000, view_ms=86_400_000, max_lateness_ms=3_600_000)

#: a visitor's changelog record as the worker wrote it before the records had names:
#: the order without ``seen`` (its oldest layout had neither identities nor domain)
OLD_VISITOR = orjson.dumps(
    {
        "t": [[T0, "c", "jane", "c1", 0], [T0 + 5, "v", "cr-leo", "v1", T0 + 9]],
        "o": [[T0 + 60_000, "ord-1", "o1", "jane20", 5999, "EUR", {"last_click": ["cr-jane"]}, "cus-1"]],
        "b": [["c1", T0]],
    }
)


def test_an_old_visitor_record_loads_with_names_and_defaults() -> None:
    state = load("visitor_state", OLD_VISITOR)
    assert isinstance(state, VisitorState)
    assert state.t[1] == Touch(T0 + 5, "v", "cr-leo", "v1", eligible_from=T0 + 9)
    (order,) = state.o
    assert (order.order_id, order.code, order.amount, order.customer) == ("ord-1", "jane20", 5999, "cus-1")
    assert (order.identities, order.domain, order.seen) == ([], "", 0.0)
    assert state.b == [Block("c1", T0)]


def test_a_visitor_record_keeps_the_compact_encoding_and_says_its_format() -> None:
    state = attr.new_state()
    attr.add_touch(state, attr.touch_from("clicks", {"ts": T0, "ref": "JANE", "event_id": "c1"}), 0, W)
    data = encode(state)
    assert orjson.loads(data) == {"v": FORMAT, "t": [[T0, "c", "jane", "c1", 0]]}  # empty lists are left out
    assert load("visitor_state", data) == state


def test_a_credited_visitor_round_trips() -> None:
    state = attr.new_state()
    attr.add_touch(state, Touch(T0, "c", "jane", "c1"), 0, W)
    order = {
        "ts": T0 + 1000,
        "order_id": "ord-1",
        "event_id": "o1",
        "amount_minor": 2500,
        "currency": "EUR",
        "customer_id": "cus-1",
        "email_hash": "h:e1",
        "referrer_domain": "Blog.Example",
    }
    record = attr.add_order(state, order, T0, W, seen_s=12.3456)
    record.ever["last_click"] = ["cr-jane"]
    attr.add_block(state, "c1", T0)
    again = load("visitor_state", encode(state))
    assert again == state
    assert again.o[0].domain == "blog.example" and again.o[0].seen == 12.346 and again.o[0].identities == ["h:e1"]


def test_the_stream_clock_in_the_visitor_table_is_not_taken_for_a_visitor() -> None:
    clock = {"t": T0, "at": {"clicks": [12, 0]}}
    assert load("visitor_state", encode(clock)) == clock
    assert load("visitor_state", b"1780000000000") == T0  # a clock written before positions were kept
    assert load("visitor_state", b"0") == 0  # a deleted key


def test_a_referrer_book_loads_its_bookings_and_keeps_every_other_key() -> None:
    old = {
        "m": {"2026-06": {"ord-1": [T0, 1.0, 5999, "EUR", 3, 0.1, {"status": "ok"}]}},
        "seq": 4,
        "lin": {"root": "cr-jane", "parent": ""},
        "parked": {"since": 1.5, "rows": []},
    }
    state = load("referrer_state", orjson.dumps(old))
    assert state["m"]["2026-06"]["ord-1"] == Booking(T0, 1.0, 5999, "EUR", 3, 0.1, {"status": "ok"})
    assert {k: v for k, v in state.items() if k != "m"} == {k: v for k, v in old.items() if k != "m"}
    assert "v" not in state  # the format is the record's, not the state's
    assert orjson.loads(encode(state)) == {"v": FORMAT, **old}
    assert load("referrer_state", encode(state)) == state


def test_an_order_ledger_loads_its_terms_and_refunds() -> None:
    ledger = comm.new_ledger(3)
    fact = {
        "referrer_id": "cr-jane",
        "credit": 1.0,
        "amount_minor": 5999,
        "rate": 0.1,
        "currency": "EUR",
        "ts": T0,
        "hold_days": 30,
        "version": 7,
    }
    assert comm.ledger_set_commission(ledger, fact)
    assert comm.ledger_add_refund(ledger, {"event_id": "r1", "ts": T0 + 5, "amount_minor": 1000})
    again = load("order_state", encode(ledger))
    assert again["c"] == {"cr-jane|commission": Terms(1.0, 5999, 0.1, "EUR", T0, 30, 7, "commission")}
    assert again["r"] == {"r1": Refund(T0 + 5, 1000)}
    assert comm.ledger_entries("ord-1", again) == comm.ledger_entries("ord-1", ledger)


def test_a_record_of_a_newer_format_stops_instead_of_being_read_wrongly() -> None:
    newer = orjson.dumps({"v": FORMAT + 1, "t": [], "o": []})
    for table in ("visitor_state", "referrer_state", "chain_state"):
        with pytest.raises(NewerFormat, match=f"format {FORMAT + 1}"):
            load(table, newer)


def test_a_record_that_does_not_fit_its_fields_is_refused() -> None:
    bad = orjson.dumps({"t": [[T0, "c", "jane"]], "o": []})  # a touch without its event id
    with pytest.raises(ValueError, match=r"\$\.t\[0\]"):
        load("visitor_state", bad)


def test_the_table_codec_is_what_faust_reads_the_changelog_with() -> None:
    codec = StateCodec("visitor_state")
    assert isinstance(codec.loads(OLD_VISITOR), VisitorState)
    state = VisitorState(o=[RetainedOrder(T0, "ord-1", "o1", "", 100, "EUR", {}, "cus-1")])
    assert codec.loads(codec.dumps(state)) == state


CHILD = """
import json
from ripple.config import load_settings
from streams.app import create_app
from streams.records import StateCodec
from faust.types import Message
app = create_app(load_settings())
seen = {}
for table in app.tables.values():
    topic = table.changelog_topic
    seen[table.name] = [isinstance(c, StateCodec) and c.table == table.name
                        for c in (table.value_serializer, topic.value_serializer, topic.schema.value_serializer)]
    message = Message(topic.get_topic_name(), 0, 0, 0.0, 0, None, b"k", b'{"t": [], "o": []}', None)
    seen[table.name].append(type(topic.schema.loads_value(app, message)).__name__)
print(json.dumps(seen))
"""


def test_every_state_table_recovers_and_writes_through_its_codec(tmp_path: Path) -> None:
    # in a child process: create_app installs process-wide fixes to Faust; no broker is needed
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLE_")}
    env.update({"RIPPLE_BOOTSTRAP": "127.0.0.1:9", "RIPPLE_DATA_DIR": str(tmp_path)})
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(seen) == {"visitor_state", "referrer_state", "order_state", "chain_state", "flood_state", "alert_state"}
    assert all(codecs[:3] == [True, True, True] for codecs in seen.values()), seen
    # a record read from the changelog comes out as the table keeps it in memory
    assert {name: codecs[3] for name, codecs in seen.items()} == {
        "visitor_state": "VisitorState",
        **{name: "dict" for name in seen if name != "visitor_state"},
    }
