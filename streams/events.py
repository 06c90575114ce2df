"""Decoding and validation of input events: pure functions, no Kafka or Faust.

A Kafka message holds one JSON event or a JSON array of events (a collector's batch).
Each event is checked against its topic's JSON Schema in ``schemas/`` plus the rules a
schema cannot say: nesting depth, raw e-mail or IP addresses in identity fields, integers
written as floats, a timestamp far in the future. Whatever fails becomes a
:class:`Rejected` with a one-line reason that never quotes an identity value; nothing
raises, whatever the bytes.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from streams.topics import INPUT_TOPICS

#: how far ahead of its message's broker timestamp an event may be (SPEC §3.5)
MAX_FUTURE_MS = 5 * 60_000
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_BATCH_EVENTS = 10_000
#: objects and arrays nested in one event, the event itself included (events need 4)
MAX_DEPTH = 32
#: the most of a rejected message or event kept as its raw bytes, so a dead letter always
#: fits in a Kafka message
MAX_RAW_KEPT = 64 * 1024
#: fields that carry a person's identity: opaque hashes or ids only, never a raw e-mail or IP
#: address (SPEC §2). A shop that keys its customers or visitors by e-mail would otherwise put
#: the address in every topic, table and Kafka key.
IDENTITY_FIELDS: dict[str, tuple[str, ...]] = {
    "views": ("visitor_id",),
    "clicks": ("ip_hash", "visitor_id"),
    "orders": ("email_hash", "payment_hash", "shipping_hash", "device_id", "ip_hash", "visitor_id", "customer_id"),
    "creators": ("email_hash", "payment_hash", "device_ids"),
}
REDACTED = "[redacted]"

#: local@domain: one character either side is enough (and keeps the search linear)
_EMAIL = re.compile(r"[^@\s]@[^@\s]")
#: what an IP address can be written with: v4, v6, [v6]:port, v4:port, a zone after %
_IP_LIKE = re.compile(r"\[?[0-9A-Fa-f:.]+(?:%[0-9A-Za-z_.-]+)?\]?(?::[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input that cannot be processed: what to write to the dead-letter topic."""

    raw: bytes
    error: str
    index: int  # position in a JSON array, -1 for the whole message


Event = dict[str, Any]


def schema_path(topic: str) -> Path:
    return SCHEMA_DIR / f"{topic}.schema.json"


@cache
def load_schema(topic: str) -> dict[str, Any]:
    with schema_path(topic).open("rb") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema


#: the pattern the schemas give identifiers (ids, codes, handles, device ids)
IDENTIFIER_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
_CONTROL = re.compile("[\u0000-\u001f\u007f-\u009f]")

Path_ = tuple[str, ...]  # field names from the event down, "[]" for every element of an array


@dataclass(frozen=True, slots=True)
class _Rules:
    """A topic's schema, compiled, and the parts of it checked in Python."""

    check: Callable[[Any], Any]
    integers: tuple[str, ...]  # top-level fields the schema wants integers in
    nested_integers: tuple[Path_, ...]
    identifiers: tuple[str, ...]  # top-level strings with IDENTIFIER_PATTERN
    nested_identifiers: tuple[Path_, ...]


@cache
def _rules(topic: str) -> _Rules:
    schema = copy.deepcopy(load_schema(topic))
    # fastjsonschema implements draft-07; the schemas use only keywords whose meaning is
    # the same in draft 2020-12, so the declared draft is swapped for compilation only.
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema.pop("examples", None)
    integers: list[Path_] = []
    identifiers: list[Path_] = []

    def walk(node: dict[str, Any], path: Path_) -> None:
        types = node.get("type")
        if types == "integer" or (isinstance(types, list) and "integer" in types):
            integers.append(path)  # fastjsonschema takes 5.0 for an integer (draft 6 on)
        if node.get("pattern") == IDENTIFIER_PATTERN:
            identifiers.append(path)  # checked in Python, where most messages skip it
            del node["pattern"]
        for name, sub in node.get("properties", {}).items():
            walk(sub, (*path, name))
        if isinstance(node.get("items"), dict):
            walk(node["items"], (*path, "[]"))

    walk(schema, ())
    return _Rules(
        check=fastjsonschema.compile(schema),
        integers=tuple(p[0] for p in integers if len(p) == 1),
        nested_integers=tuple(p for p in integers if len(p) > 1),
        identifiers=tuple(p[0] for p in identifiers if len(p) == 1),
        nested_identifiers=tuple(p for p in identifiers if len(p) > 1),
    )


def _values_at(value: Any, path: Path_, name: str = "data") -> Iterator[tuple[str, Any]]:
    if not path:
        yield name, value
        return
    step, rest = path[0], path[1:]
    if step == "[]":
        if isinstance(value, list):
            for i, item in enumerate(value):
                yield from _values_at(item, rest, f"{name}[{i}]")
    elif isinstance(value, dict) and step in value:
        yield from _values_at(value[step], rest, f"{name}.{step}")


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels (no recursion, so any depth)."""
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for item in level:
            for child in item.values() if type(item) is dict else item if type(item) is list else ():
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
        level = below
    return False


def raw_identity(value: str) -> str | None:
    """What a raw identity value is (``e-mail address``, ``IP address``); None for a hash.

    Values longer than any identity field allows are left to the schema's length check."""
    if len(value) > 1024:
        return None
    value = value.strip()
    if "@" in value and _EMAIL.search(value):
        return "e-mail address"
    if (":" in value or "." in value) and _IP_LIKE.fullmatch(value):
        host = value
        if host.startswith("["):  # [2001:db8::1]:443
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:  # 10.0.0.1:8080
            host = host.partition(":")[0]
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return None
        return "IP address"
    return None


def raw_identities(topic: str, event: Event) -> list[tuple[str, int, str]]:
    """Identity fields of ``event`` holding a raw e-mail or IP: (field, index or -1, what)."""
    found: list[tuple[str, int, str]] = []
    for field in IDENTITY_FIELDS.get(topic, ()):
        value = event.get(field)
        if isinstance(value, str):
            what = raw_identity(value)
            if what:
                found.append((field, -1, what))
        elif isinstance(value, list):
            for i, item in enumerate(value[:100]):  # the schema allows no more
                what = raw_identity(item) if isinstance(item, str) else None
                if what:
                    found.append((field, i, what))
    return found


def redacted(topic: str, event: Event) -> Event:
    """``event`` with every raw identity value replaced, for a dead letter."""
    out = dict(event)
    for field, index, _ in raw_identities(topic, event):
        if index < 0:
            out[field] = REDACTED
        else:
            out[field] = [REDACTED if i == index else v for i, v in enumerate(out[field])]
    return out


def validate(topic: str, event: Any, now_ms: int, max_future_ms: int = MAX_FUTURE_MS) -> str | None:
    """Return why ``event`` is not a valid ``topic`` event, or None when it is valid.

    ``now_ms`` is the message's own time (see :func:`message_time`), so the answer is the
    same on every replay.
    """
    return _check(topic, event, now_ms, max_future_ms, nested=True, controls=True)


def _check(topic: str, event: Any, now_ms: int, max_future_ms: int, nested: bool, controls: bool) -> str | None:
    """:func:`validate`; ``nested`` False skips the depth check and ``controls`` False the
    control characters in identifiers, for an event of a message that cannot hold them."""
    if not isinstance(event, dict):
        return f"event must be a JSON object, got {type(event).__name__}"
    if nested and too_deep(event):
        return f"event nests objects and arrays more than {MAX_DEPTH} levels deep"
    identities = raw_identities(topic, event)
    if identities:
        field, index, what = identities[0]
        name = field if index < 0 else f"{field}[{index}]"
        return f"{name} looks like a raw {what}: identity fields take opaque hashes only (value redacted)"
    rules = _rules(topic)
    try:
        rules.check(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        return f"schema: {exc.message}"
    for field in rules.integers:
        if type(event.get(field)) is float:
            return f"schema: data.{field} must be an integer, not a number with a fraction or exponent"
    for path in rules.nested_integers:
        if path[0] in event:
            for name, value in _values_at(event, path):
                if type(value) is float:
                    return f"schema: {name} must be an integer, not a number with a fraction or exponent"
    if controls:
        for field in rules.identifiers:
            value = event.get(field)
            if type(value) is str and _CONTROL.search(value):
                return f"schema: data.{field} must not contain control characters"
        for path in rules.nested_identifiers:
            if path[0] in event:
                for name, value in _values_at(event, path):
                    if type(value) is str and _CONTROL.search(value):
                        return f"schema: {name} must not contain control characters"
    ts = event.get("ts", event.get("issued_ts"))
    if isinstance(ts, int) and ts > now_ms + max_future_ms:
        return f"ts {ts} is more than {max_future_ms // 1000} s ahead of the message time {now_ms}"
    return None


def message_time(timestamp_ms: float | None, wall_ms: int) -> int:
    """The time a message's events are checked against: its own timestamp, but never later
    than the wall clock (a producer's clock cannot let far-future events in) and the wall
    clock when the message has none. Messages stamped in the past get the same answer on
    every replay."""
    if timestamp_ms is None or timestamp_ms <= 0:
        return wall_ms
    return min(round(timestamp_ms), wall_ms)


def _kept(raw: bytes) -> bytes:
    return raw[:MAX_RAW_KEPT]


def _pruned(value: Any, limit: int = MAX_DEPTH) -> Any:
    """A copy of ``value`` with whatever nests deeper than ``limit`` levels replaced by a note."""
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]
    while stack:
        src, dst, depth = stack.pop()
        pairs = src.items() if isinstance(src, dict) else enumerate(src)
        for key, child in pairs:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    child = "[nested too deep]"
                else:
                    twin: Any = {} if isinstance(child, dict) else []
                    stack.append((child, twin, depth + 1))
                    child = twin
            if isinstance(dst, dict):
                dst[key] = child
            else:
                dst.append(child)
    return root


def _encode(topic: str, item: Any) -> bytes:
    """A rejected event as bytes: re-encoded, identities redacted, deep nesting cut."""
    if too_deep(item):
        item = _pruned(item)
    if isinstance(item, dict) and raw_identities(topic, item):
        item = redacted(topic, item)
    try:
        return _kept(orjson.dumps(item))
    except (TypeError, orjson.JSONEncodeError):  # not from orjson.loads: an integer beyond 64 bits
        return b""


def decode(
    topic: str, raw: bytes | None, now_ms: int, max_future_ms: int = MAX_FUTURE_MS
) -> tuple[list[Event], list[Rejected]]:
    """Split one Kafka message into valid events and rejections."""
    if topic not in INPUT_TOPICS:
        raise ValueError(f"unknown input topic {topic!r}")
    if raw is None:
        return [], [Rejected(b"", "empty message (null value)", -1)]
    if len(raw) > MAX_MESSAGE_BYTES:
        return [], [Rejected(raw[:1024], f"message of {len(raw)} bytes is over the limit", -1)]
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [], [Rejected(_kept(raw), f"not JSON: {exc}", -1)]
    if isinstance(value, list):
        if len(value) > MAX_BATCH_EVENTS:
            return [], [Rejected(raw[:1024], f"batch of {len(value)} events is over the limit", -1)]
        items: list[tuple[int, Any]] = list(enumerate(value))
    else:
        items = [(-1, value)]
    nested = raw.count(b"{") + raw.count(b"[") > MAX_DEPTH
    # no string of the message holds a control character without one of these bytes: JSON
    # escapes C0 controls with a backslash, DEL is 0x7f and C1 controls start with 0xc2
    controls = b"\\" in raw or b"\x7f" in raw or b"\xc2" in raw
    good: list[Event] = []
    bad: list[Rejected] = []
    for index, item in items:
        error = _check(topic, item, now_ms, max_future_ms, nested, controls)
        if error is None:
            good.append(item)
        elif index >= 0:
            bad.append(Rejected(_encode(topic, item), error, index))
        elif isinstance(item, dict) and raw_identities(topic, item):
            bad.append(Rejected(_encode(topic, item), error, index))
        else:
            bad.append(Rejected(_kept(raw), error, index))
    return good, bad
