"""Decoding and validation of input events (streams/events.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hostile import Generator, corpus
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from ripple.config import DAY_MS
from ripple.simulator import SimConfig, generate
from streams.events import (
    MAX_BATCH_EVENTS,
    MAX_DEPTH,
    MAX_RAW_KEPT,
    REDACTED,
    SCHEMA_DIR,
    decode,
    load_schema,
    message_time,
    validate,
)
from streams.topics import INPUT_TOPICS

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


@pytest.mark.parametrize(
    ("ahead_ms", "ok"),
    [
        (0, True),
        (5 * 60_000, True),  # exactly max_future (5 minutes by default): fine
        (5 * 60_000 + 1, False),  # a millisecond more: a dead letter, never a clock
        (23 * 3_600_000, False),  # a view dated 23 hours ahead
        (-30 * DAY_MS, True),  # the past is never "future" (lateness is the worker's)
    ],
)
def test_a_timestamp_more_than_max_future_ahead_of_its_message_time_is_rejected(ahead_ms: int, ok: bool) -> None:
    event = example("clicks")
    msg_time = event["ts"]
    error = validate("clicks", {**event, "ts": msg_time + ahead_ms}, msg_time)
    assert (error is None) == ok, error
    if not ok:
        assert error is not None and "300 s ahead" in error


def test_max_future_is_a_setting() -> None:
    event = example("clicks")
    assert validate("clicks", {**event, "ts": event["ts"] + DAY_MS}, event["ts"], max_future_ms=DAY_MS) is None


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
    good, bad = decode("orders", orjson.dumps([ev, broken, {**ev, "event_id": "o-3"}]), ev["ts"])
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


# -- identity fields take hashes only --------------------------------------------------
RAW_IDENTITIES = [
    ("orders", "email_hash", "jane@example.com", "e-mail address"),
    ("orders", "email_hash", " Jane.Doe+promo@mail.example.org ", "e-mail address"),
    ("orders", "payment_hash", "2001:db8::1", "IP address"),
    ("orders", "shipping_hash", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "IP address"),
    ("orders", "ip_hash", "10.0.0.1", "IP address"),
    ("orders", "ip_hash", "fe80::1%eth0", "IP address"),
    ("orders", "ip_hash", "10.0.0.1:8080", "IP address"),
    ("orders", "device_id", "jane@example.com", "e-mail address"),
    ("orders", "device_id", "192.168.1.20", "IP address"),
    ("orders", "device_id", "[2001:db8::1]:443", "IP address"),
    ("clicks", "ip_hash", "2001:db8::1", "IP address"),
    ("clicks", "ip_hash", "::ffff:10.0.0.1", "IP address"),
    ("creators", "email_hash", "jane@localhost", "e-mail address"),
    # ids are not hashes, but they must not be a person's address either
    ("orders", "customer_id", "jane.doe@example.com", "e-mail address"),
    ("orders", "visitor_id", "jane@example.com", "e-mail address"),
    ("views", "visitor_id", " jane@example.com", "e-mail address"),
    ("clicks", "visitor_id", "192.168.1.20", "IP address"),
    ("creators", "payment_hash", "fe80::abcd", "IP address"),
]


@pytest.mark.parametrize("topic, field, value, what", RAW_IDENTITIES, ids=lambda v: str(v))
def test_a_raw_identity_is_rejected_naming_the_field_never_the_value(
    topic: str, field: str, value: str, what: str
) -> None:
    event = {**example(topic), field: value}
    for raw, index in ((orjson.dumps(event), -1), (orjson.dumps([example(topic), event]), 1)):
        good, bad = decode(topic, raw, NOW + DAY_MS)
        assert len(bad) == 1 and bad[0].index == index and len(good) == max(index, 0)
        assert bad[0].error.startswith(f"{field} looks like a raw {what}")
        assert value.strip() not in bad[0].error
        # the dead letter keeps the event, not the person's address
        assert value.strip() not in bad[0].raw.decode()
        assert orjson.loads(bad[0].raw)[field] == REDACTED


def test_device_ids_of_a_creator_are_checked_one_by_one() -> None:
    event = {**example("creators"), "device_ids": ["dev-1", "10.0.0.7", "ios-2"]}
    error = validate("creators", event, NOW)
    assert error is not None and error.startswith("device_ids[1] looks like a raw IP address")
    _, bad = decode("creators", orjson.dumps(event), NOW)
    assert orjson.loads(bad[0].raw)["device_ids"] == ["dev-1", REDACTED, "ios-2"]


@pytest.mark.parametrize(
    "topic, field, value",
    [
        ("orders", "email_hash", "h:1a2b3c4d5e6f"),
        ("orders", "payment_hash", "AAAA/BBBB+CCCC=="),
        ("orders", "ip_hash", "deadbeefcafebabe"),  # hex, but no address
        ("orders", "ip_hash", "sha256:0a1b2c3d4e5f"),
        ("orders", "device_id", "AA:BB:CC:DD:EE:FF"),  # a MAC-like id is not an IP address
        ("orders", "device_id", "device:1:2"),
        ("orders", "device_id", "iPhone 15"),
        ("creators", "device_ids", ["ios-1234", "a1:b2:c3:d4"]),
        ("orders", "customer_id", "cus-77"),
        ("orders", "customer_id", "shopify:gid://Customer/1234"),
        ("orders", "visitor_id", "vis-8f3a.1c2d"),
        ("views", "visitor_id", "0a1b2c3d-4e5f-6789-abcd-ef0123456789"),
    ],
)
def test_hashes_and_device_ids_pass(topic: str, field: str, value: Any) -> None:
    assert validate(topic, {**example(topic), field: value}, NOW + DAY_MS) is None


@given(
    st.sampled_from(
        [(t, f) for t, fields in (("clicks", ["ip_hash"]),) for f in fields]
        + [
            ("orders", "email_hash"),
            ("orders", "payment_hash"),
            ("orders", "shipping_hash"),
            ("orders", "ip_hash"),
            ("orders", "device_id"),
            ("creators", "email_hash"),
            ("creators", "payment_hash"),
            ("orders", "customer_id"),
            ("orders", "visitor_id"),
            ("views", "visitor_id"),
            ("clicks", "visitor_id"),
        ]
    ),
    st.one_of(st.ip_addresses().map(str), st.emails()),
)
@settings(max_examples=300, deadline=None)
def test_every_ip_address_and_e_mail_address_is_caught(where: tuple[str, str], value: str) -> None:
    topic, field = where
    error = validate(topic, {**example(topic), field: value}, NOW + DAY_MS)
    assert error is not None and error.startswith(f"{field} looks like a raw ")
    assert value not in error


def test_the_schemas_themselves_refuse_an_ipv6_address_as_a_hash() -> None:
    for topic, field in (("clicks", "ip_hash"), ("orders", "payment_hash"), ("creators", "email_hash")):
        validator = Draft202012Validator(load_schema(topic))
        assert not list(validator.iter_errors({**example(topic), field: "h:0a1b2c3d4e5f"}))
        for raw in ("2001:db8::1", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80::1", "10.0.0.1", "a@b.example"):
            assert list(validator.iter_errors({**example(topic), field: raw})), (topic, raw)


# -- whatever the bytes, decode answers ---------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"[" * 100_000,
        b"[" * 1025 + b"]" * 1025,
    ],
    ids=["100k arrays", "100k objects", "100k unclosed", "1025 arrays"],
)
def test_deep_nesting_is_rejected_without_recursion(raw: bytes) -> None:
    good, bad = decode("clicks", raw, NOW)
    assert good == [] and len(bad) == 1 and bad[0].index == -1 and "not JSON" in bad[0].error


def nested(event: dict[str, Any], depth: int) -> bytes:
    """``event`` with a field ``depth`` arrays deep: the event nests ``depth + 1`` levels."""
    return orjson.dumps(event)[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, 100, 300, 1000])
def test_an_event_nested_deeper_than_the_limit_is_rejected_with_its_raw_cut(depth: int) -> None:
    ev = example("clicks")
    raw = b"[" + orjson.dumps(ev) + b"," + nested({**ev, "event_id": "c-deep"}, depth) + b"]"
    good, bad = decode("clicks", raw, NOW)
    if depth + 1 <= MAX_DEPTH:
        assert len(good) == 2 and bad == []
        return
    assert good == [ev] and len(bad) == 1 and bad[0].index == 1
    assert f"more than {MAX_DEPTH} levels" in bad[0].error
    assert orjson.loads(bad[0].raw)["event_id"] == "c-deep"  # re-encoded, the deep part cut
    good, bad = decode("clicks", nested(ev, depth), NOW)  # alone in its message
    assert good == [] and bad[0].index == -1 and bad[0].raw == nested(ev, depth)[:MAX_RAW_KEPT]


@pytest.mark.parametrize(
    "topic, field, literal",
    [
        ("orders", "amount_minor", b"5999.0"),
        ("orders", "amount_minor", b"1e3"),
        ("orders", "amount_minor", b"-0.0"),
        ("orders", "amount_minor", b"123456789012345678901234567890"),  # beyond 64 bits: a float
        ("orders", "amount_minor", b"9223372036854775808"),
        ("refunds", "amount_minor", b"-1"),
        ("clicks", "ts", b"1767225600000.0"),
        ("clicks", "ts", b"18446744073709551616"),
        ("clicks", "ts", b"-1"),
        ("creators", "followers", b"1e30"),
        ("creators", "followers", b"24000.0"),
        ("codes", "expires_ts", b"99999999999999999999"),
    ],
)
def test_numbers_that_are_not_whole_in_range_integers_are_rejected(topic: str, field: str, literal: bytes) -> None:
    raw = orjson.dumps({**example(topic), field: "\x00N"}).replace(b'"\\u0000N"', literal)
    good, bad = decode(topic, raw, NOW + DAY_MS)
    assert good == [] and field in bad[0].error


def test_an_integer_written_as_a_float_is_rejected_in_nested_fields_too() -> None:
    order = {**example("orders"), "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2.0}]}
    assert validate("orders", order, NOW + DAY_MS) == (
        "schema: data.items[1].qty must be an integer, not a number with a fraction or exponent"
    )
    creator = {**example("creators"), "plan": {"rate": 0.1, "hold_days": 30.0}}
    assert "data.plan.hold_days must be an integer" in str(validate("creators", creator, NOW))


@pytest.mark.parametrize(
    "topic, field, value",
    [
        ("clicks", "visitor_id", "\x00stream_timevisitors:0"),  # a worker's own state key
        ("clicks", "event_id", "c-1\n"),
        ("views", "creator_id", "cr-\x1b[31mred"),
        ("orders", "order_id", "ord-\x7f"),
        ("orders", "discount_code", "JANE\x8520"),  # a C1 control
        ("codes", "code", "JANE\t20"),
    ],
)
def test_control_characters_in_identifiers_are_rejected(topic: str, field: str, value: str) -> None:
    good, bad = decode(topic, orjson.dumps({**example(topic), field: value}), NOW + DAY_MS)
    assert good == [] and bad[0].error == f"schema: data.{field} must not contain control characters"
    _, bad = decode("creators", orjson.dumps({**example("creators"), "device_ids": ["ok", "a\x00b"]}), NOW)
    assert bad[0].error == "schema: data.device_ids[1] must not contain control characters"


def test_odd_but_valid_text_is_kept() -> None:
    click = {
        **example("clicks"),
        "event_id": "c-\u200f\u202e\u200d\U0001f600",  # RTL marks, a joiner, an emoji
        "visitor_id": "vis-\u00a0\u2028\ufeff",
        "user_agent": "Mozilla\x00/5.0\n",  # not an identifier: kept as sent
    }
    order = {**example("orders"), "discount_code": ""}
    assert decode("clicks", orjson.dumps(click), NOW + DAY_MS) == ([click], [])
    assert decode("orders", orjson.dumps(order), NOW + DAY_MS) == ([order], [])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id": "\\ud800"}',  # a lone surrogate escape
        b'{"event_id": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8
        b'{"event_id": "\xc0\x80"}',  # an overlong NUL
        b'\xef\xbb\xbf{"event_id": "c-1"}',  # a byte order mark
        b'{"ts": NaN}',
        b'{"ts": Infinity}',
        b'{"ts": -Infinity}',
        b"",
    ],
)
def test_text_that_is_not_json_is_rejected_whole(raw: bytes) -> None:
    good, bad = decode("clicks", raw, NOW)
    assert good == [] and [(r.index, r.error[:8]) for r in bad] == [(-1, "not JSON")]


def test_a_dead_letter_keeps_at_most_64_kib_of_the_message() -> None:
    raw = orjson.dumps({**example("clicks"), "user_agent": "u" * 3_000_000})
    _, bad = decode("clicks", raw, NOW + DAY_MS)
    assert bad[0].raw == raw[:MAX_RAW_KEPT] and "user_agent" in bad[0].error
    _, bad = decode("clicks", raw[:-1], NOW)  # truncated: not JSON
    assert len(bad[0].raw) == MAX_RAW_KEPT


def test_message_time_never_runs_ahead_of_the_wall_clock() -> None:
    assert message_time(NOW - 5, NOW) == NOW - 5  # the message's own time: the same on every replay
    assert message_time(NOW + 10 * DAY_MS, NOW) == NOW  # a producer clock far ahead vouches for nothing
    assert message_time(1_767_225_600_000.0000002, NOW + 1) == 1_767_225_600_000  # Faust's seconds * 1000
    assert message_time(None, NOW) == NOW and message_time(-1, NOW) == NOW  # no timestamp
    far = {**example("clicks"), "ts": NOW + 30 * DAY_MS}
    good, bad = decode("clicks", orjson.dumps(far), message_time(NOW + 30 * DAY_MS, NOW))
    assert good == [] and "ahead" in bad[0].error


# -- properties ------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def near_events(draw: st.DrawFn, topic: str) -> dict[str, Any]:
    """An example event with some fields dropped or given any JSON value."""
    event = example(topic)
    for key in list(event):
        roll = draw(st.integers(0, 9))
        if roll == 0:
            del event[key]
        elif roll == 1:
            event[key] = draw(JSON)
    if draw(st.booleans()):
        event[draw(st.text(max_size=6))] = draw(JSON)
    return event


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes | None]:
    topic = draw(st.sampled_from(INPUT_TOPICS))
    body = orjson.dumps(example(topic))
    kind = draw(st.integers(0, 6))

    def dumps(value: Any) -> bytes:  # the standard library writes integers of any size
        return json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")

    if kind == 0:
        return topic, draw(st.binary(max_size=200))
    if kind == 1:
        return topic, dumps(draw(JSON))
    if kind == 2:
        return topic, dumps(draw(near_events(topic)))
    if kind == 3:
        return topic, dumps(draw(st.lists(near_events(topic) | JSON, max_size=6)))
    if kind == 4:  # bytes cut, replaced or inserted
        at = draw(st.integers(0, len(body)))
        return topic, body[:at] + draw(st.binary(max_size=4)) + body[at + draw(st.integers(0, 3)) :]
    if kind == 5:
        depth = draw(st.integers(0, 1100))
        return topic, b"[" * depth + body + b"]" * depth
    return topic, None


@given(messages(), st.integers(0, 2**45))
@settings(max_examples=500, deadline=None)
def test_decode_never_raises_and_accounts_for_every_event(message: tuple[str, bytes | None], now: int) -> None:
    topic, raw = message
    good, bad = decode(topic, raw, now)
    assert all(r.error and "\n" not in r.error and len(r.raw) <= MAX_RAW_KEPT for r in bad)
    assert all(validate(topic, e, now) is None for e in good)
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        value = None
        assert good == [] and [r.index for r in bad] == [-1]
    if isinstance(value, list) and len(value) <= MAX_BATCH_EVENTS:
        indices = [r.index for r in bad]
        assert indices == sorted(set(indices)) and all(0 <= i < len(value) for i in indices)
        assert good == [v for i, v in enumerate(value) if i not in set(indices)]
    elif isinstance(value, dict):
        assert (good, [r.index for r in bad]) in (([value], []), ([], [-1]))


def test_the_hostile_corpus_is_dead_lettered_as_built() -> None:
    """tests/hostile.py without Kafka: every message's rejections are the ones it was built with."""
    ds = generate(SimConfig(seed=5, start_ms=NOW, views=300))
    now = NOW + 30 * DAY_MS  # after the simulated fortnight
    gen = Generator(5, ds, now)
    hostile = corpus(gen, singles=2000, events=6000)
    hostile += [gen.wrap(m) for m in ds.events[:200] if m.event is not None and m.topic != "codes"]
    wrong = []
    for h in hostile:
        good, bad = decode(h.topic, h.value, message_time(h.timestamp or now, now))
        if tuple(r.index for r in bad) != h.bad or len(good) != h.good:
            wrong.append((h.kind, h.topic, h.bad[:5], [r.error for r in bad][:3]))
        for r in bad:
            assert r.error and not any(v in r.error for v in gen.raw_values)
            if "looks like a raw" in r.error:
                assert not any(v in r.raw.decode("utf-8", "replace") for v in gen.raw_values)
    assert not wrong, wrong[:5]
