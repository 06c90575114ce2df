"""The records kept in the state tables, named and typed.

A visitor's touches and orders, a referrer's monthly book and an order's commission terms
and refunds were positional lists read through index constants. They are msgspec
``Struct``s now: ``array_like=True`` keeps the compact encoding (a record is still written
as ``[ts, kind, ref, ...]``), and the fields have names and types that are checked when a
changelog record is read back.

Every changelog record carries the format it was written in (``"v"``). A record without
one was written before it was kept and has the same layout: it loads. A record of a newer
format than this code knows stops the recovery with a clear error instead of being read
wrongly. When a layout changes, :data:`FORMAT` goes up and :func:`load` learns to read the
old one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from faust.serializers.codecs import Codec

#: the layout of the state records this code writes
FORMAT = 1


class Touch(msgspec.Struct, array_like=True):
    """A view or click of a visitor (``streams.attribution``)."""

    ts: int
    kind: str  # "c": click, ref is the code or slug (lower case); "v": view, ref is the creator
    ref: str
    event_id: str
    #: a touch that arrived late counts only for orders after the stream time it arrived at
    eligible_from: int = 0


class RetainedOrder(msgspec.Struct, array_like=True):
    """An order kept while a late touch or a fraud verdict can still restate it."""

    ts: int
    order_id: str
    event_id: str
    code: str  # lower case, "" without one
    amount: int
    currency: str
    #: per model, every referrer the order was ever credited to ("_conflict": a conflict row was written)
    ever: dict[str, Any]
    customer: str
    identities: list[str] = []  # hashed identities (kept since format 1; older records have none)
    domain: str = ""  # the referrer domain, lower case
    seen: float = 0.0  # when it was processed (wall clock, seconds)


class Block(msgspec.Struct, array_like=True):
    """A fraud verdict on one of a visitor's touches."""

    event_id: str
    ts: int


class VisitorState(msgspec.Struct, tag_field="v", tag=FORMAT, omit_defaults=True):
    """Everything a visitor's key holds: touches sorted by ``ts``, retained orders, blocks."""

    t: list[Touch] = []
    o: list[RetainedOrder] = []
    b: list[Block] = []


class Booking(msgspec.Struct, array_like=True):
    """One order in a referrer's monthly book (``streams.commission``)."""

    ts: int
    credit: float
    amount: int
    currency: str
    version: int
    rate: float  # -1 until the tier is worked out
    #: the attribution fields needed to write the row again when its rate moves
    row: dict[str, Any]

    def terms(self) -> tuple[int, float, int, str]:
        """What decides the order's commission besides its row and rate."""
        return (self.ts, self.credit, self.amount, self.currency)


class Terms(msgspec.Struct, array_like=True):
    """A referrer's commission (or chain override) on one order (the order's ledger)."""

    credit: float
    amount: int
    rate: float
    currency: str
    ts: int
    hold_days: int
    version: int
    kind: str  # commission | override


class Refund(msgspec.Struct, array_like=True):
    ts: int
    amount: int


class NewerFormat(ValueError):
    """A changelog record written by a newer Ripple than this one."""


def encode(value: Any) -> bytes:
    """A state table's changelog record: the value with the format it is written in."""
    if isinstance(value, dict):
        return _encoder.encode({"v": FORMAT, **value})
    return _encoder.encode(value)


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        version = value.pop("v", FORMAT)
        if version != FORMAT:
            raise NewerFormat(f"a state record of format {version!r}; this Ripple reads format {FORMAT}")
    return value


def _visitor(value: Any) -> Any:
    value = _untag(value)  # a record without its tag converts as one of this format
    if isinstance(value, dict) and "at" not in value:  # a visitor, not the agent's stream clock
        return msgspec.convert(value, VisitorState)
    return value


_BOOK = dict[str, dict[str, Booking]]


def _referrer(value: Any) -> Any:
    value = _untag(value)
    if isinstance(value, dict) and "m" in value:
        value["m"] = msgspec.convert(value["m"], _BOOK)
    return value


def _ledger(value: Any) -> Any:
    value = _untag(value)
    if isinstance(value, dict) and "c" in value:
        value["c"] = msgspec.convert(value["c"], dict[str, Terms])
        value["r"] = msgspec.convert(value.get("r", {}), dict[str, Refund])
    return value


#: how each state table's records are read back
LOADERS: dict[str, Callable[[Any], Any]] = {
    "visitor_state": _visitor,
    "referrer_state": _referrer,
    "order_state": _ledger,
}


def load(table: str, data: bytes) -> Any:
    """A changelog record of ``table`` as the worker keeps it in memory."""
    return LOADERS.get(table, _untag)(_decoder.decode(data))


class StateCodec(Codec):
    """The value codec of a state table: :func:`encode` and :func:`load`."""

    def __init__(self, table: str, **kwargs: Any) -> None:
        super().__init__(table=table, **kwargs)
        self.table = table

    def _dumps(self, s: Any) -> bytes:
        return encode(s)

    def _loads(self, s: bytes) -> Any:
        return load(self.table, s)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
