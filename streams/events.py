"""Decoding and validation of input events: pure functions, no Kafka or Faust.

A Kafka message holds one JSON event or a JSON array of events (a collector's batch).
Each event is checked against its topic's JSON Schema in ``schemas/`` plus the rules a
schema cannot say (a timestamp far in the future). Whatever fails becomes a
:class:`Rejected` with a one-line reason; nothing raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from ripple.config import DAY_MS, INPUT_TOPICS

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_BATCH_EVENTS = 10_000


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


@cache
def _compiled(topic: str) -> Callable[[Any], Any]:
    schema = dict(load_schema(topic))
    # fastjsonschema implements draft-07; the schemas use only keywords whose meaning is
    # the same in draft 2020-12, so the declared draft is swapped for compilation only.
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema.pop("examples", None)
    return fastjsonschema.compile(schema)


def validate(topic: str, event: Any, now_ms: int, max_future_ms: int = DAY_MS) -> str | None:
    """Return why ``event`` is not a valid ``topic`` event, or None when it is valid.

    ``now_ms`` is the message's own timestamp, so the answer is the same on every replay.
    """
    if not isinstance(event, dict):
        return f"event must be a JSON object, got {type(event).__name__}"
    try:
        _compiled(topic)(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        return f"schema: {exc.message}"
    ts = event.get("ts", event.get("issued_ts"))
    if isinstance(ts, int) and ts > now_ms + max_future_ms:
        return f"ts {ts} is more than {max_future_ms // 1000} s ahead of the message time {now_ms}"
    return None


def decode(
    topic: str, raw: bytes | None, now_ms: int, max_future_ms: int = DAY_MS
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
        return [], [Rejected(raw, f"not JSON: {exc}", -1)]
    if isinstance(value, list):
        if len(value) > MAX_BATCH_EVENTS:
            return [], [Rejected(raw[:1024], f"batch of {len(value)} events is over the limit", -1)]
        items: list[tuple[int, Any]] = list(enumerate(value))
    else:
        items = [(-1, value)]
    good: list[Event] = []
    bad: list[Rejected] = []
    for index, item in items:
        error = validate(topic, item, now_ms, max_future_ms)
        if error is None:
            good.append(item)
        else:
            bad.append(Rejected(raw if index < 0 else orjson.dumps(item), error, index))
    return good, bad
