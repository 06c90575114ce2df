"""Attribution: a visitor's touches and orders in, credited rows out. Pure logic.

State per visitor is a :class:`streams.records.VisitorState`: touches sorted by ``ts``
(``t``), retained orders (``o``) and touches blocked by a fraud verdict (``b``).

* A touch's ``kind`` is ``"c"`` (click, ``ref`` is the code or slug, lower case) or ``"v"``
  (view, ``ref`` is the creator).
* ``eligible_from``: a touch that arrived late (more than ``max_lateness`` behind stream
  time) counts only for orders after the stream time it arrived at, so it never changes
  an order already seen, on the first run or on a replay.
* Recent orders stay for ``max_lateness`` of stream time; a touch that arrives within
  that time restates them. They stay for ``hold_ms`` when that is longer, so a fraud
  verdict on a touch reached elsewhere (a click flood, decided per ip) restates them too
  — and in any case until that verdict can no longer be on its way: ``seen`` is when the
  order was processed (wall clock, seconds), and an order leaves only once everything in
  the topics then has been read (``settled_before``; in a backlog, stream time runs days
  ahead while a verdict travels, live it runs milliseconds).
  ``ever`` maps each model to every referrer the order has ever been credited to, so a
  restatement writes zero rows for those that lost credit.

Every row carries ``version`` = 1 + number of stored touches inside the longest window
before the order (+1 for a code, +1 per blocked touch among them). Touches and blocks are
only ever added, so a restatement always has a higher version than what it replaces, and the
same final state always gives the same rows: replays collapse in ClickHouse.
"""

from __future__ import annotations

import math
from bisect import insort
from dataclasses import dataclass
from typing import Any

from streams.lineage import order_identities
from streams.models import DEFAULT_HALF_LIFE_MS, MODELS, weights
from streams.records import Block, RetainedOrder, Touch, VisitorState
from streams.reference import ReferenceData, Referrer

State = VisitorState
Row = dict[str, Any]


@dataclass(frozen=True)
class Windows:
    click_ms: int
    view_ms: int
    max_lateness_ms: int
    max_touches: int = 64
    half_life_ms: int = DEFAULT_HALF_LIFE_MS
    #: click injection: a click this close before an order gets no credit for it ...
    block_below_ms: int = 0
    #: ... and this close is credited but flagged
    flag_below_ms: int = 0
    #: how long orders stay restatable by fraud verdicts on their touches (event time)
    hold_ms: int = 0

    @property
    def longest_ms(self) -> int:
        return max(self.click_ms, self.view_ms)

    @property
    def retain_ms(self) -> int:
        return max(self.max_lateness_ms, self.hold_ms)


def new_state() -> State:
    return VisitorState()


def is_late(ts: int, stream_time: int, w: Windows) -> bool:
    return ts < stream_time - w.max_lateness_ms


def late_row(topic: str, event: dict[str, Any], stream_time: int, partition: int) -> dict[str, Any]:
    """The late_events record of an event that arrived behind its task's stream time."""
    return {
        "topic": topic,
        "event_id": event["event_id"],
        "ts": event["ts"],
        "stream_time": stream_time,
        "lateness_ms": stream_time - event["ts"],
        "partition": partition,
    }


def add_touch(state: State, touch: Touch, stream_time: int, w: Windows) -> list[RetainedOrder]:
    """Store a touch; return the retained orders it restates (empty if late or duplicate)."""
    touches = state.t
    for t in touches:
        if t.event_id == touch.event_id:
            # A duplicate: changes nothing, but the orders the stored touch counts for are
            # emitted again so a replay that lost its first output still writes it.
            return [o for o in state.o if _eligible(t, o.ts)]
    late = is_late(touch.ts, stream_time, w)
    if late:
        # counts only for orders after the stream time it arrived at: none of the orders
        # already seen changes, whatever else restates them later (SPEC §3.5)
        touch.eligible_from = stream_time + 1
    insort(touches, touch, key=lambda t: (t.ts, t.event_id))
    if len(touches) > w.max_touches:
        del touches[: len(touches) - w.max_touches]
    if late:
        return []
    return [o for o in state.o if _eligible(touch, o.ts)]


def _eligible(t: Touch, order_ts: int) -> bool:
    """Whether a new touch can change an order: earlier, and not excluded as late.

    Windows are checked when the order is credited (they depend on the referrer)."""
    return t.ts <= order_ts and order_ts >= t.eligible_from


def add_order(state: State, order: dict[str, Any], stream_time: int, w: Windows, seen_s: float = 0.0) -> RetainedOrder:
    """Remember an order for restatement unless it is late; return its state record.
    ``seen_s``: when it is processed (wall clock, seconds)."""
    for o in state.o:
        if o.order_id == order["order_id"]:
            return o
    record = RetainedOrder(
        ts=order["ts"],
        order_id=order["order_id"],
        event_id=order["event_id"],
        code=(order.get("discount_code") or "").lower(),
        amount=order["amount_minor"],
        currency=order["currency"],
        ever={},
        customer=order["customer_id"],
        identities=order_identities(order),
        domain=(order.get("referrer_domain") or "").lower(),
        seen=round(seen_s, 3),
    )
    if not is_late(order["ts"], stream_time, w):
        state.o.append(record)
    return record


def expire(
    state: State, stream_time: int, w: Windows, longest_ms: int | None = None, settled_before: float = math.inf
) -> None:
    """Drop orders past ``max_lateness`` (and ``hold_ms``) that were processed before
    ``settled_before``, and touches no future order can use.

    ``longest_ms`` is the longest window in force, creator overrides included."""
    horizon = stream_time - w.retain_ms
    keep_click = max(w.click_ms, longest_ms or 0)
    keep_view = max(w.view_ms, longest_ms or 0)
    state.o = [o for o in state.o if o.ts >= horizon or o.seen >= settled_before]
    state.t = [t for t in state.t if t.ts >= horizon - (keep_click if t.kind == "c" else keep_view)]
    if state.b:
        state.b = [b for b in state.b if b.ts >= horizon - keep_click]


def is_empty(state: State) -> bool:
    return not state.t and not state.o and not state.b


def add_block(state: State, event_id: str, ts: int) -> list[RetainedOrder]:
    """A fraud verdict on one of the visitor's touches: it gets no credit from now on.

    Returns the retained orders it may restate (again on a duplicate, so a replay that
    lost its first output still writes it)."""
    if not any(b.event_id == event_id for b in state.b):
        state.b.append(Block(event_id, ts))
    return [o for o in state.o if ts <= o.ts]


@dataclass(frozen=True)
class Credit:
    """One referrer's share of an order under one model."""

    referrer_id: str
    referrer_type: str
    credit: float
    touch_type: str  # code | click | view
    touch_event_id: str
    touch_ts: int


@dataclass(frozen=True)
class Result:
    credits: dict[str, list[Credit]]  # model -> credited referrers
    conflict: dict[str, Any] | None
    version: int
    #: clicks that got no credit because they came too close before the order
    injected: tuple[tuple[str, str, int], ...] = ()  # (referrer, click event id, ms before)
    #: whether the visitor touched the code's referrer (an eligible click or view)
    code_touched: bool = False
    #: the referrer of the order's valid code, if any
    code_owner: Referrer | None = None


def _touch_counts_for(t: Touch, order_ts: int, w: Windows, ref: ReferenceData) -> bool:
    """Whether a stored touch qualifies for an order, with the referrer's own windows."""
    if t.ts > order_ts or order_ts < t.eligible_from:
        return False
    age = order_ts - t.ts
    if t.kind == "c":
        referrer = ref.resolve(t.ref, t.ts)
        if referrer is None:
            return False
        return age <= ref.click_window_ms(referrer.referrer_id, w.click_ms)
    return age <= ref.view_window_ms(t.ref, w.view_ms)


def credit_order(state: State, order: RetainedOrder, ref: ReferenceData, w: Windows, policy: str) -> Result:
    """Credit one order under every model, with the code-vs-link ``policy`` (SPEC §3)."""
    order_ts = order.ts
    # The touches that could count, each kind within its longest window: exactly what
    # expire() keeps while the order is retained, so the count (and the version) only grows.
    keep_click = max(w.click_ms, ref.longest_override_ms)
    keep_view = max(w.view_ms, ref.longest_override_ms)
    considered = [
        t
        for t in state.t
        if t.ts <= order_ts
        and order_ts >= t.eligible_from
        and order_ts - t.ts <= (keep_click if t.kind == "c" else keep_view)
    ]
    blocked = {b.event_id for b in state.b}
    clicks: list[tuple[Touch, Referrer]] = []
    views: list[Touch] = []
    injected: list[tuple[str, str, int]] = []
    n_blocked = 0
    for t in considered:
        if t.event_id in blocked:
            n_blocked += 1
            continue
        if not _touch_counts_for(t, order_ts, w, ref):
            continue
        if t.kind == "c":
            referrer = ref.resolve(t.ref, t.ts)
            assert referrer is not None
            if order_ts - t.ts < w.block_below_ms:
                injected.append((referrer.referrer_id, t.event_id, order_ts - t.ts))
                continue
            clicks.append((t, referrer))
        else:
            views.append(t)
    code = ref.resolve(order.code, order_ts) if order.code else None
    version = 1 + len(considered) + n_blocked + (1 if code else 0)
    code_touched = code is not None and (
        any(r.referrer_id == code.referrer_id for _, r in clicks) or any(t.ref == code.referrer_id for t in views)
    )

    code_credit = Credit(code.referrer_id, code.referrer_type, 1.0, "code", order.event_id, order_ts) if code else None
    click_touches = [(t.ts, r.referrer_id, r.referrer_type, "click", t.event_id) for t, r in clicks]
    view_touches = [(t.ts, t.ref, "creator", "view", t.event_id) for t in views]

    credits: dict[str, list[Credit]] = {}
    for model in MODELS:
        if code_credit and (policy == "code_wins" or not click_touches):
            credits[model] = [code_credit]
        elif code_credit and policy == "split":
            half = Credit(**{**code_credit.__dict__, "credit": 0.5})
            credits[model] = _merge([half, *_spread(model, click_touches, order_ts, w, 0.5)])
        elif click_touches:
            credits[model] = _spread(model, click_touches, order_ts, w, 1.0)
        elif view_touches:
            credits[model] = _spread(model, view_touches, order_ts, w, 1.0)
        else:
            credits[model] = []

    conflict = None
    if code and click_touches:
        last = click_touches[-1]
        if last[1] != code.referrer_id:
            winner = {"code_wins": "code", "click_wins": "click", "split": "split"}[policy]
            conflict = {
                "order_id": order.order_id,
                "code_referrer_id": code.referrer_id,
                "click_referrer_id": last[1],
                "policy": policy,
                "winner": winner,
                "ts": order_ts,
                "version": version,
            }
    return Result(credits, conflict, version, tuple(injected), code_touched, code)


def _spread(
    model: str, touches: list[tuple[int, str, str, str, str]], order_ts: int, w: Windows, share: float
) -> list[Credit]:
    ws = weights(model, [t[0] for t in touches], order_ts, w.half_life_ms)
    per_touch = [
        Credit(referrer_id, rtype, share * weight, kind, event_id, ts)
        for (ts, referrer_id, rtype, kind, event_id), weight in zip(touches, ws, strict=True)
        if weight > 0
    ]
    return _merge(per_touch)


def _merge(per_touch: list[Credit]) -> list[Credit]:
    """Sum credits per referrer; the touch shown is the referrer's heaviest (latest on ties)."""
    by_referrer: dict[str, Credit] = {}
    for c in per_touch:
        prev = by_referrer.get(c.referrer_id)
        if prev is None:
            by_referrer[c.referrer_id] = c
            continue
        best = c if c.credit >= prev.credit else prev
        by_referrer[c.referrer_id] = Credit(
            c.referrer_id, c.referrer_type, prev.credit + c.credit, best.touch_type, best.touch_event_id, best.touch_ts
        )
    return list(by_referrer.values())


def rows_for(order: RetainedOrder, result: Result, ref: ReferenceData, w: Windows | None = None) -> list[Row]:
    """Attribution rows for every model, including zero rows for referrers that lost credit.

    A click credited less than ``w.flag_below_ms`` before the order is marked
    ``click_injection`` in ``reasons`` (credited, but flagged)."""
    flag_ms = w.flag_below_ms if w else 0
    ever = order.ever
    rows: list[Row] = []
    amount = order.amount
    for model in MODELS:
        credits = {c.referrer_id: c for c in result.credits[model]}
        seen = ever.setdefault(model, [])
        for referrer_id in credits:
            if referrer_id not in seen:
                seen.append(referrer_id)
        for referrer_id in seen:
            c = credits.get(referrer_id)
            credit = c.credit if c else 0.0
            rows.append(
                {
                    "order_id": order.order_id,
                    "model": model,
                    "referrer_id": referrer_id,
                    "referrer_type": c.referrer_type if c else ref.referrer_type(referrer_id),
                    "root_creator_id": "",
                    "touch_type": c.touch_type if c else "",
                    "touch_event_id": c.touch_event_id if c else "",
                    "credit": credit,
                    "revenue_minor": round(credit * amount),
                    "commission_minor": 0,
                    "currency": order.currency,
                    "ctot_ms": order.ts - c.touch_ts if c else 0,
                    "status": "ok",
                    "reasons": ["click_injection"]
                    if c and c.touch_type == "click" and order.ts - c.touch_ts < flag_ms
                    else [],
                    "generation": 0,
                    "version": result.version,
                    "ts": order.ts,
                    "amount_minor": amount,
                    "customer_id": order.customer,
                    "identities": order.identities,
                }
            )
    return rows


def touch_from(topic: str, event: dict[str, Any]) -> Touch:
    if topic == "clicks":
        return Touch(event["ts"], "c", event["ref"].lower(), event["event_id"])
    return Touch(event["ts"], "v", event["creator_id"], event["event_id"])


def handle_event(
    topic: str,
    event: dict[str, Any],
    state: State,
    stream_time: int,
    w: Windows,
    ref: ReferenceData,
    policy: str,
    seen_s: float = 0.0,
) -> list[tuple[RetainedOrder, Result]]:
    """One view, click or order of a visitor: the orders (re)credited because of it."""
    if topic == "orders":
        order = add_order(state, event, stream_time, w, seen_s)
        return [(order, credit_order(state, order, ref, w, policy))]
    return [
        (o, credit_order(state, o, ref, w, policy)) for o in add_touch(state, touch_from(topic, event), stream_time, w)
    ]


def conflict_row(order: RetainedOrder, result: Result, policy: str) -> dict[str, Any] | None:
    """The conflicts record to write for a credited order, if any (a retraction when one ended)."""
    ever = order.ever
    if result.conflict is not None:
        ever["_conflict"] = True
        return {**result.conflict, "active": 1}
    if ever.get("_conflict"):
        return {
            "order_id": order.order_id,
            "code_referrer_id": "",
            "click_referrer_id": "",
            "policy": policy,
            "winner": "",
            "ts": order.ts,
            "version": result.version,
            "active": 0,
        }
    return None
