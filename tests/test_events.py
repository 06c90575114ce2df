"""Decoding and validation of input events (streams/events.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from ripple.config import DAY_MS, INPUT_TOPICS
from streams.events import SCHEMA_DIR, decode, validate

NOW = 1_767_225_600_000


def example(topic: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / "examples" / f"{topic}.json").read_text())


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_every_example_is_valid(topic: str) -> None:
    assert validate(topic, example(topic), NOW + 10 * DAY_MS) is None


@dataclass
class Case:
    topic: str
    change: dict[str, Any]
    drop: tuple[str, ...]
    error: str  # part of the message
    why: str


CASES = [
    Case("orders", {"amount_minor": -1}, (), "amount_minor", "negative amounts are refused"),
    Case("orders", {"amount_minor": "12.00"}, (), "amount_minor", "money must be integer minor units"),
    Case("orders", {"amount_minor": 10.5}, (), "amount_minor", "fractional minor units are refused"),
    Case("orders", {"currency": "usd"}, (), "currency", "currency is an upper-case ISO code"),
    Case("orders", {}, ("order_id",), "order_id", "a required field is missing"),
    Case("orders", {"email_hash": "jane@example.com"}, (), "email_hash", "a raw e-mail is not a hash"),
    Case("clicks", {"ts": "2026-01-01"}, (), "ts", "ts is epoch milliseconds, not a string"),
    Case("clicks", {}, ("ref",), "ref", "a click needs a ref"),
    Case("clicks", {"ip_hash": "10.0.0.1"}, (), "ip_hash", "a raw IP is not a hash"),
    Case("views", {"kind": "glance"}, (), "kind", "view kinds are an enumeration"),
    Case("views", {"ts": True}, (), "ts", "a boolean is not a timestamp"),
    Case("refunds", {"amount_minor": -5}, (), "amount_minor", "negative refunds are refused"),
    Case("codes", {"referrer_type": "brand"}, (), "referrer_type", "referrers are creators or customers"),
    Case("creators", {"followers": -3}, (), "followers", "follower counts are not negative"),
    Case("creators", {"plan": {"rate": 1.5}}, (), "rate", "a commission rate is a fraction"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.why)
def test_invalid_events_are_named(case: Case) -> None:
    event = {**example(case.topic), **case.change}
    for key in case.drop:
        event.pop(key)
    error = validate(case.topic, event, NOW + DAY_MS)
    assert error is not None
    assert case.error in error


def test_timestamp_more_than_a_day_ahead_of_message_time_is_rejected() -> None:
    event = example("clicks")
    msg_time = event["ts"]
    assert validate("clicks", {**event, "ts": msg_time + DAY_MS}, msg_time) is None  # exactly one day: fine
    error = validate("clicks", {**event, "ts": msg_time + DAY_MS + 1}, msg_time)
    assert error is not None and "ahead" in error


def test_decode_single_event_and_array() -> None:
    ev = example("views")
    good, bad = decode("views", orjson.dumps(ev), NOW)
    assert good == [ev] and bad == []
    second = {**ev, "event_id": "v-2"}
    good, bad = decode("views", orjson.dumps([ev, second]), NOW)
    assert [e["event_id"] for e in good] == [ev["event_id"], "v-2"] and bad == []


def test_a_bad_element_of_an_array_is_rejected_alone() -> None:
    ev = example("orders")
    broken = {**ev, "event_id": "o-2", "amount_minor": -10}
    good, bad = decode("orders", orjson.dumps([ev, broken, {**ev, "event_id": "o-3"}]), NOW)
    assert [e["event_id"] for e in good] == [ev["event_id"], "o-3"]
    assert len(bad) == 1 and bad[0].index == 1 and "amount_minor" in bad[0].error
    assert orjson.loads(bad[0].raw)["event_id"] == "o-2"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "not JSON"),
        (b'{"event_id": ', "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"NaN", "not JSON"),
        (b"42", "JSON object"),
        (b"[1, 2]", "JSON object"),
        (b"null", "JSON object"),
        (b'{"a": 1e999}', "not JSON"),
    ],
)
def test_garbage_is_rejected_with_its_raw_bytes(raw: bytes, reason: str) -> None:
    good, bad = decode("clicks", raw, NOW)
    assert good == []
    assert bad and all(reason in r.error for r in bad)
    if raw and not raw.startswith(b"["):
        assert bad[0].raw == raw


def test_null_message_value_is_rejected() -> None:
    good, bad = decode("clicks", None, NOW)
    assert good == [] and "null" in bad[0].error


def test_unknown_topic_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        decode("nope", b"{}", NOW)
