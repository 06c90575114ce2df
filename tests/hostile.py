"""Hostile input for the input topics, generated from a seed, each message knowing what
must become of it: which of its events go to the dead letters (by index, -1 for the whole
message) and how many must pass.

Bad events are bad by construction (the JSON or UTF-8 is broken, a required field is
missing, a value breaks its schema, an identity field holds a raw e-mail or IP address),
never by asking the decoder. Good ones ("odd but valid") use fresh ids, visitors that never
order and codes nobody owns, and event times inside the simulated program, so they change
no attribution of the simulated orders.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ripple.simulator import Dataset, Message
from streams.events import SCHEMA_DIR

DAY_MS = 86_400_000
PREFIX = "fz-ok-"  # event ids (order ids, codes, creator ids) of the odd but valid events
ODD = ("\u200f", "\u202e", "\u200d", "\ufeff", "\u00a0", "\u2028", "é", "\u0301", "日本", "\U0001f600", "Ω")
BAD_UTF8 = (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\xfe")
TOPICS = ("views", "clicks", "orders", "refunds", "codes", "creators")
KEY_FIELD = {"codes": "code", "creators": "creator_id", "refunds": "order_id", "views": "creator_id"}
#: SPEC §2: identity fields take opaque hashes only
IDENTITY_FIELDS = {
    "clicks": ("ip_hash",),
    "orders": ("email_hash", "payment_hash", "shipping_hash", "device_id", "ip_hash"),
    "creators": ("email_hash", "payment_hash", "device_ids"),
}
#: identifiers: no control characters
ID_FIELDS = {
    "views": ("event_id", "creator_id", "content_id", "visitor_id"),
    "clicks": ("event_id", "visitor_id", "ref", "creator_id"),
    "orders": ("event_id", "order_id", "visitor_id", "customer_id", "discount_code", "device_id"),
    "refunds": ("event_id", "order_id"),
    "codes": ("code", "referrer_id"),
    "creators": ("creator_id", "handle"),
}
MAX_BATCH_EVENTS = 10_000


@dataclass(frozen=True)
class Hostile:
    topic: str
    key: bytes | None
    value: bytes | None
    bad: tuple[int, ...]  # indices of the events to dead-letter; (-1,) for the whole message
    good: int  # events that must pass
    kind: str  # what was done, for failure messages
    timestamp: int = 0  # message time (ms) to set; 0: the producer's clock
    slot: int = 0  # sent before the simulated event at this position (its odd events carry that time)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


class Generator:
    """Hostile messages and events, from templates of real (simulated) events."""

    def __init__(self, seed: int, ds: Dataset, now_ms: int) -> None:
        self.rng = random.Random(seed)
        self.now_ms = now_ms
        self.templates: dict[str, list[dict[str, Any]]] = {t: [] for t in TOPICS}
        for m in (*ds.reference, *ds.events):
            if m.event is not None:
                self.templates[m.topic].append(m.event)
        self.lo_ts = min(int(e["ts"]) for m in ds.events if (e := m.event) is not None)
        self.hi_ts = max(int(e["ts"]) for m in ds.events if (e := m.event) is not None)
        # the stream's time before each simulated event (they are produced in event-time
        # order): an odd event sent there is dated then, as a storefront's live event is
        self.timeline = [self.lo_ts]
        for m in ds.events:
            self.timeline.append(max(self.timeline[-1], int(m.event["ts"]) if m.event is not None else 0))
        self.slot = 0
        schemas = {t: orjson.loads((SCHEMA_DIR / f"{t}.schema.json").read_bytes()) for t in TOPICS}
        self.required = {t: tuple(schemas[t]["required"]) for t in TOPICS}
        self.properties = {t: schemas[t]["properties"] for t in TOPICS}
        self.serial = 0
        self.raw_values: list[str] = []  # raw e-mails and IPs put in identity fields
        self.odd_counts: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self.element_bad: list[Callable[[str], bytes]] = [
            self.missing_field,
            self.wrong_type,
            self.bad_number,
            self.bad_time,
            self.raw_identity,
            self.control_character,
            self.too_long,
            self.too_deep,
            self.not_an_object,
            self.enum_or_pattern,
            self.empty_object,
        ]

    # -- helpers ----------------------------------------------------------------------
    def next_id(self) -> int:
        self.serial += 1
        return self.serial

    def template(self, topic: str) -> dict[str, Any]:
        return dict(self.rng.choice(self.templates[topic]))

    def key_of(self, topic: str, event: dict[str, Any] | None = None) -> bytes | None:
        if event is not None:
            value = event.get(KEY_FIELD.get(topic, "visitor_id")) or event.get("creator_id")
            if isinstance(value, str) and len(value) < 200:
                return value.encode("utf-8", "surrogatepass")
        roll = self.rng.random()
        if roll < 0.05:
            return None
        if roll < 0.1:
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 20)))
        return f"fz-key-{self.rng.randrange(10_000)}".encode()

    def odd_text(self, base: str) -> str:
        """``base`` followed by odd (but allowed) characters: marks, joiners, emoji."""
        return base + "".join(self.rng.choice(ODD) for _ in range(self.rng.randrange(1, 4)))

    def string_fields(self, topic: str, event: dict[str, Any]) -> list[str]:
        return [k for k, v in event.items() if isinstance(v, str) and k in self.properties[topic]]

    # -- bad events (each returns the JSON of one event that must be rejected) ---------
    def missing_field(self, topic: str) -> bytes:
        event = self.template(topic)
        event.pop(self.rng.choice(self.required[topic]))
        return _dumps(event)

    def wrong_type(self, topic: str) -> bytes:
        event = self.template(topic)
        field = self.rng.choice(self.required[topic])
        spec = self.properties[topic][field]
        if spec.get("type") == "integer":
            event[field] = self.rng.choice(["12", [], {}, None, True, False, 1.5, "NaN", [1]])
        elif spec.get("type") == "string":
            event[field] = self.rng.choice([123, [], {}, None, True, 0.0, ["a"], {"a": "b"}])
        else:  # an enumeration
            event[field] = self.rng.choice([1, None, [], True])
        return _dumps(event)

    def bad_number(self, topic: str) -> bytes:
        event = self.template(topic)
        field = {"orders": "amount_minor", "refunds": "amount_minor", "creators": "followers"}.get(topic, "ts")
        if topic == "codes":
            field = "issued_ts"
        literal = self.rng.choice(
            [
                b"-1",
                b"-1000000000000",
                b"123456789012345678901234567890",  # beyond 64 bits: orjson reads a float
                b"9223372036854775808",  # int64 max + 1
                b"18446744073709551615",  # uint64 max
                b"-9223372036854775809",
                b"99999999999999999999999",
                b"1e300",
                b"-1e300",
                b"5999.5",
                b"1767225600000.0",  # integral but written as a float
                b"1.7672256e12",
                b"-0.0",
            ]
        )
        if field in ("amount_minor", "followers") and self.rng.random() < 0.3:
            literal = b"100000000000001"  # over the schema's maximum
        event[field] = "\x00SENTINEL"
        return _dumps(event).replace(b'"\\u0000SENTINEL"', literal)

    def bad_time(self, topic: str) -> bytes:
        event = self.template(topic)
        field = "issued_ts" if topic == "codes" else "ts"
        if topic == "creators":  # creators carry no time: a bad follower count instead
            event["followers"] = -self.rng.randrange(1, 10**6)
            return _dumps(event)
        event[field] = self.rng.choice(
            [
                self.now_ms + 2 * DAY_MS + self.rng.randrange(10**9),  # more than a day ahead
                self.now_ms + 365 * DAY_MS * 800,  # year 2800
                -1,
                -self.rng.randrange(1, 10**15),  # before 1970
                32503680000001,  # past the schema's year 3000
                "2026-01-01T00:00:00Z",
                1.5e12 + 0.5,
            ]
        )
        return _dumps(event)

    def raw_identity(self, topic: str) -> bytes:
        fields = IDENTITY_FIELDS.get(topic)
        if not fields:
            return self.missing_field(topic)
        event = self.template(topic)
        field = self.rng.choice(fields)
        n = self.rng.randrange(1, 255)
        value = self.rng.choice(
            [
                f"jane.doe{n}@example.com",
                f"  someone+{n}@mail.example.org ",
                f"user{n}@localhost",
                f"10.{n}.0.1",
                f"192.168.{n}.7",
                f"2001:db8::{n:x}",
                f"2001:0db8:85a3:0000:0000:8a2e:0370:{n:04x}",
                f"fe80::{n:x}%eth0",
                f"::ffff:10.0.0.{n}",
                f"[2001:db8::{n:x}]:443",
                f"10.0.0.{n}:8080",
                f"::{n:x}",
            ]
        )
        self.raw_values.append(value.strip())
        event[field] = [f"dev-ok-{n}", value] if field == "device_ids" else value
        return _dumps(event)

    def control_character(self, topic: str) -> bytes:
        event = self.template(topic)
        field = self.rng.choice(ID_FIELDS[topic])
        if self.rng.random() < 0.2 and topic in ("views", "clicks", "orders"):
            event["visitor_id"] = "\x00stream_timevisitors:0"  # the name of the worker's own state key
        else:
            char = chr(self.rng.choice([*range(32), *range(127, 160)]))
            text = str(event.get(field) or "x")
            at = self.rng.randrange(len(text) + 1)
            event[field] = text[:at] + char + text[at:]
        return _dumps(event)

    def too_long(self, topic: str) -> bytes:
        event = self.template(topic)
        limited = [k for k, v in self.properties[topic].items() if "maxLength" in v and v.get("type") == "string"]
        field = self.rng.choice(limited)
        limit = self.properties[topic][field]["maxLength"]
        size = limit + 1 + (self.rng.randrange(20_000) if self.rng.random() < 0.1 else self.rng.randrange(50))
        event[field] = (self.rng.choice(["x", "é", "\U0001f600", "a\u0301"]) * size)[: max(size, limit + 1)]
        return _dumps(event)

    def too_deep(self, topic: str) -> bytes:
        event = self.template(topic)
        depth = self.rng.choice([32, 33, 100, 254, 255, 256, 1000, self.rng.randrange(32, 1020)])
        opener, closer = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        body = _dumps(event)
        inner = b"1" if opener == b'{"a":' else b""
        return body[:-1] + b',"nested":' + opener * depth + inner + closer * depth + b"}"

    def not_an_object(self, topic: str) -> bytes:
        return self.rng.choice([b"42", b'"event"', b"null", b"true", b"[]", b"[1,2]", b"1.5", b'[{"a":1}]', b"-0"])

    def enum_or_pattern(self, topic: str) -> bytes:
        event = self.template(topic)
        if topic == "views":
            event["kind"] = self.rng.choice(["glance", "IMPRESSION", "", "impression "])
        elif topic == "codes":
            event["referrer_type"] = self.rng.choice(["brand", "Creator", "", None])
        elif topic == "creators":
            event["plan"] = self.rng.choice(
                [{"rate": 1.5}, {"rate": -0.1}, {"tiers": [{"rate": 0.1}]}, {"hold_days": 9999}, "gold", []]
            )
        elif topic == "orders":
            event["currency"] = self.rng.choice(["usd", "US", "USDD", "ＵＳＤ", "US\u200fD", "", "USD\n"])
        elif topic == "clicks":
            event["ip_hash"] = self.rng.choice(["short", "has space in it", "tab\there!", "h:ünïcode-hash"])
        else:
            event["reason"] = "r" * 257
        return _dumps(event)

    def empty_object(self, topic: str) -> bytes:
        return b"{}"

    def bad_event(self, topic: str) -> bytes:
        return self.rng.choice(self.element_bad)(topic)

    # -- odd but valid events ----------------------------------------------------------
    def odd_event(self, topic: str) -> dict[str, Any]:
        """A valid event with fresh ids and odd (but allowed) content."""
        n = self.next_id()
        rng = self.rng
        # dated up to a minute before the stream's time where it is sent, or in 1970 (late)
        ts = self.timeline[self.slot] - rng.randrange(60_000) if rng.random() < 0.9 else rng.randrange(0, 10**9)
        eid = self.odd_text(f"{PREFIX}{n}-") if rng.random() < 0.5 else f"{PREFIX}{n}"
        visitor = self.odd_text(f"fz-vis-{n}")  # a visitor of one event only: never an order's touch
        extra: dict[str, Any] = {}
        if rng.random() < 0.3:
            nested: Any = {"leaf": rng.choice(ODD)}
            for _ in range(rng.randrange(0, 28)):
                nested = [nested]
            extra["x_unknown"] = nested
        if rng.random() < 0.01:
            extra["x_big"] = "b" * rng.randrange(10_000, 300_000)
        text = rng.choice(["Mozilla/5.0 \u0000 NUL", "tab\tand\nnewline", "\u202eevil", "🙂" * 100, "a" * 512])
        self.odd_counts[topic] += 1
        if topic == "views":
            return {
                "event_id": eid,
                "ts": ts,
                "creator_id": self.odd_text(f"fz-cr-{n}"),
                "content_id": self.odd_text("post"),
                "visitor_id": visitor,
                "platform": rng.choice(["", "tiktok", "ÿ" * 32]),
                **extra,
            }
        if topic == "clicks":
            return {
                "event_id": eid,
                "ts": ts,
                "visitor_id": visitor,
                "ref": self.odd_text(f"fz-ref-{n}"),  # a code nobody owns
                "user_agent": text,
                "utm_source": rng.choice(["\u0000", "x" * 256, "日本"]),
                "ip_hash": rng.choice(["h:" + "f" * 20, "AAAA/BBBB+CCCC==", "abcdef0123456789"]),
                **extra,
            }
        if topic == "orders":
            return {
                "event_id": eid,
                "ts": ts,
                "order_id": f"fz-ord-{n}",
                "visitor_id": visitor,
                "customer_id": self.odd_text(f"fz-cus-{n}"),
                "amount_minor": rng.choice([0, 1, 10**12, rng.randrange(10**6)]),
                "currency": rng.choice(["USD", "EUR", "XXX"]),
                "discount_code": rng.choice([None, f"fz-nocode-{n}", ""]),
                "device_id": rng.choice([f"fz-dev-{n}", "iPhone\u00a015", "device:1:2"]),
                "items": [{"sku": rng.choice(ODD), "qty": rng.randrange(0, 10)} for _ in range(rng.randrange(0, 40))],
                "user_agent": text,
                **extra,
            }
        if topic == "refunds":
            return {
                "event_id": eid,
                "ts": ts,
                "order_id": f"fz-ord-none-{n}",  # an order that never comes
                "amount_minor": rng.choice([0, 10**12]),
                "reason": rng.choice(["", "\u0000", "\u202edamaged"]),
                **extra,
            }
        if topic == "codes":
            return {
                "code": f"{PREFIX}kode-{n}" + rng.choice(["", "\u00e9", "\u0130"]),
                "referrer_id": f"fz-nobody-{n}",
                "referrer_type": rng.choice(["creator", "customer"]),
                "issued_ts": ts,
                "active": rng.choice([True, False]),
                "expires_ts": rng.choice([None, 32503680000000, 0]),
                "discount_pct": rng.choice([None, 0, 100, 12.5]),
                **extra,
            }
        return {
            "creator_id": f"{PREFIX}cr-{n}",
            "handle": self.odd_text(f"fz-{n}"),
            "followers": rng.choice([0, 9_999, 10_000, 10**10]),
            "device_ids": [f"fz-dev-{n}", "AA:BB:CC:DD:EE:FF"],
            "plan": rng.choice([{}, {"rate": 0}, {"rate": 1, "tiers": [], "currency": "EUR", "hold_days": 0}]),
            **extra,
        }

    # -- messages ----------------------------------------------------------------------
    def place(self) -> int:
        """Choose where among the simulated events the next message goes."""
        self.slot = self.rng.randrange(len(self.timeline))
        return self.slot

    def single(self) -> Hostile:
        """One message of one event (bad or odd) or of garbage."""
        rng = self.rng
        topic = rng.choice(TOPICS)
        roll = rng.random()
        if roll < 0.45:
            value = self.bad_event(topic)
            parsed = orjson.loads(value)
            # "[]", "[1,2]" and '[{"a":1}]' are arrays: each element is a bad event
            bad = tuple(range(len(parsed))) if isinstance(parsed, list) else (-1,)
            return Hostile(topic, self.key_of(topic), value, bad, 0, "bad event")
        if roll < 0.9:
            return self.garbage(topic)
        event = self.odd_event(topic)
        return Hostile(topic, self.key_of(topic, event), _dumps(event), (), 1, "odd but valid")

    def mixed_array(self, topic: str | None = None, size: int | None = None) -> Hostile:
        """An array of bad and odd events (under 1 MB, what a Kafka message holds by default)."""
        rng = self.rng
        topic = topic or rng.choice(TOPICS)
        n = size if size is not None else rng.choice([0, 1, 2, 3, rng.randrange(2, 60), rng.randrange(50, 400)])
        parts: list[bytes] = []
        bad: list[int] = []
        good = 0
        odd_share = rng.random() * 0.5
        key_event: dict[str, Any] | None = None
        length = 0
        for i in range(n):
            if length > 500_000:
                break
            if rng.random() < odd_share:
                event = self.odd_event(topic)
                key_event = key_event or event
                parts.append(_dumps(event))
                good += 1
            else:
                parts.append(self.bad_event(topic))
                bad.append(i)
            length += len(parts[-1]) + 1
        return Hostile(topic, self.key_of(topic, key_event), b"[" + b",".join(parts) + b"]", tuple(bad), good, "array")

    def garbage(self, topic: str) -> Hostile:
        """A message that is not a JSON event or array at all: one dead letter."""
        rng = self.rng
        body = _dumps(self.template(topic))
        kinds: list[tuple[str, Callable[[], bytes | None]]] = [
            ("random bytes", self.random_bytes),
            ("truncated", lambda: body[: rng.randrange(len(body))]),
            ("bad utf-8", lambda: self.insert(body, rng.choice(BAD_UTF8))),
            ("bad utf-8 in array", lambda: self.insert(b"[" + body + b"," + body + b"]", rng.choice(BAD_UTF8))),
            ("bom", lambda: b"\xef\xbb\xbf" + body),
            ("trailing", lambda: body + rng.choice([b"x", b"}", b",{}", b"]", b"\x00", b"{}"])),
            ("not a number", lambda: self.non_finite(topic)),
            ("lone surrogate", lambda: self.lone_surrogate(topic)),
            ("raw control", lambda: self.insert(body, bytes([rng.randrange(0, 32)]), inside_string=True)),
            ("deep", self.deep_message),
            ("scalar", lambda: rng.choice([b"null", b"42", b'"x"', b"true", b"false", b"-1", b"1e5", b'""'])),
            ("empty", lambda: b""),
            ("null value", lambda: None),
            ("whitespace", lambda: rng.choice([b" ", b"\n\t", b"\r\n"])),
        ]
        kind, make = rng.choice(kinds)
        return Hostile(topic, self.key_of(topic), make(), (-1,), 0, kind)

    def random_bytes(self) -> bytes:
        while True:
            size = self.rng.choice([self.rng.randrange(1, 64), self.rng.randrange(64, 4096)])
            value = bytes(self.rng.randrange(256) for _ in range(size))
            try:
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError:
                return value
            if not isinstance(parsed, dict | list):
                return value  # a scalar: still one dead letter

    def insert(self, body: bytes, junk: bytes, inside_string: bool = False) -> bytes:
        if inside_string:
            at = body.index(b'":"') + 3  # inside the first string value
        else:
            at = self.rng.randrange(len(body) + 1)
        return body[:at] + junk + body[at:]

    def non_finite(self, topic: str) -> bytes:
        event = self.template(topic)
        field = {"codes": "issued_ts", "creators": "followers"}.get(topic, "ts")
        event[field] = "\x00SENTINEL"
        literal = self.rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"nan", b"inf"])
        return _dumps(event).replace(b'"\\u0000SENTINEL"', literal)

    def lone_surrogate(self, topic: str) -> bytes:
        event = self.template(topic)
        field = self.rng.choice(self.string_fields(topic, event))
        event[field] = "\x00SENTINEL"
        literal = self.rng.choice([b'"\\ud800"', b'"a\\udc00b"', b'"\\ud83d"', b'"\\udfff\\ud800"'])
        return _dumps(event).replace(b'"\\u0000SENTINEL"', literal)

    def deep_message(self) -> bytes:
        depth = self.rng.choice([1025, 5000, 100_000])
        return self.rng.choice(
            [
                b"[" * depth + b"]" * depth,
                b'{"a":' * depth + b"1" + b"}" * depth,
                b"[" * depth,  # never closed
            ]
        )

    def huge(self, topic: str, size: int) -> Hostile:
        """A message of about ``size`` bytes whose event has a field over its length limit."""
        event = self.template(topic)
        field = self.rng.choice(
            [k for k, v in self.properties[topic].items() if v.get("type") == "string" and "maxLength" in v]
        )
        event[field] = "h" * size
        return Hostile(topic, self.key_of(topic), _dumps(event), (-1,), 0, "huge")

    def over_limit_batch(self, topic: str) -> Hostile:
        value = b"[" + b",".join([b"{}"] * (MAX_BATCH_EVENTS + 1)) + b"]"
        return Hostile(topic, self.key_of(topic), value, (-1,), 0, "batch over the limit")

    def forged_time(self, topic: str) -> Hostile:
        """A valid-looking event far in the future, in a message stamped as far ahead: the
        producer's clock cannot vouch for it."""
        event = self.template(topic)
        ahead = self.now_ms + self.rng.randrange(30, 3650) * DAY_MS
        event["issued_ts" if topic == "codes" else "ts"] = ahead
        if topic == "creators":
            event["followers"] = -1  # creators carry no time: keep it bad another way
        return Hostile(topic, self.key_of(topic, event), _dumps(event), (-1,), 0, "forged time", ahead + 1000)

    def stamped_in_the_past(self, topic: str) -> Hostile:
        event = self.template(topic)
        if topic == "creators":
            event["followers"] = -1
        return Hostile(topic, self.key_of(topic, event), _dumps(event), (-1,), 0, "stamped in 1970", 1000)

    def wrap(self, m: Message) -> Hostile:
        """A simulated event inside an array of bad events, under its own key."""
        assert m.event is not None
        n = self.rng.choice([1, 2, 5, 20])
        parts = [self.bad_event(m.topic) for _ in range(n)]
        at = self.rng.randrange(n + 1)
        parts.insert(at, m.value)
        bad = tuple(i for i in range(n + 1) if i != at)
        return Hostile(m.topic, m.key.encode(), b"[" + b",".join(parts) + b"]", bad, 1, "simulated event among bad")


def specials(gen: Generator) -> Iterator[Hostile]:
    """The few rare messages every corpus holds."""
    makers: list[Callable[[str], Hostile]] = [
        gen.forged_time,
        gen.stamped_in_the_past,
        gen.over_limit_batch,
        lambda topic: gen.huge(topic, 900_000),
        lambda topic: gen.mixed_array(topic, size=5_000),
    ]
    for topic in TOPICS:
        for make in makers:
            slot = gen.place()
            yield replace(make(topic), slot=slot)


def corpus(gen: Generator, singles: int, events: int) -> list[Hostile]:
    """``singles`` messages of one event or of garbage, then arrays of bad and odd events
    until the corpus holds ``events`` events (a message of garbage counts as one)."""
    out = list(specials(gen))
    for _ in range(singles):
        slot = gen.place()
        out.append(replace(gen.single(), slot=slot))
    total = sum(count(h) for h in out)
    while total < events:
        slot = gen.place()
        h = replace(gen.mixed_array(), slot=slot)
        out.append(h)
        total += count(h)
    return sorted(out, key=lambda h: h.slot)


def count(h: Hostile) -> int:
    """The events of a message: a message of garbage is one."""
    return len(h.bad) + h.good
