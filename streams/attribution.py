"""Attribution: a visitor's touches and orders in, credited rows out. Pure logic.

State per visitor is a small JSON-able dict, so it can live in a Faust table:

``{"t": [[ts, kind, ref, event_id, eligible_from], ...],   # touches, sorted by ts
   "o": [[ts, order_id, event_id, code, amount, currency, ever], ...]}``  # recent orders

* ``kind`` is ``"c"`` (click, ``ref`` is the code or slug, lower case) or ``"v"`` (view,
  ``ref`` is the creator).
* ``eligible_from``: a touch that arrived late (more than ``max_lateness`` behind stream
  time) counts only for orders at or after that event time, so it never changes an
  order that was already final, on the first run or on a replay.
* Recent orders stay for ``max_lateness`` of stream time; a touch that arrives within
  that time restates them. ``ever`` is every referrer the order has ever been credited
  to, so a restatement writes zero rows for those that lost credit.

Every row carries ``version`` = 1 + number of touches that qualified. Touches are only
ever added, so a restatement always has a higher version than what it replaces, and the
same final state always gives the same rows: replays collapse in ClickHouse.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass
from typing import Any

from streams.reference import ReferenceData

MODEL_LAST_CLICK = "last_click"

State = dict[str, list[list[Any]]]
Row = dict[str, Any]

# touch fields
T_TS, T_KIND, T_REF, T_ID, T_FROM = range(5)
# retained order fields
O_TS, O_ID, O_EVENT, O_CODE, O_AMOUNT, O_CURRENCY, O_EVER = range(7)


@dataclass(frozen=True)
class Windows:
    click_ms: int
    view_ms: int
    max_lateness_ms: int
    max_touches: int = 64

    @property
    def longest_ms(self) -> int:
        return max(self.click_ms, self.view_ms)


def new_state() -> State:
    return {"t": [], "o": []}


def is_late(ts: int, stream_time: int, w: Windows) -> bool:
    return ts < stream_time - w.max_lateness_ms


def add_touch(state: State, touch: list[Any], stream_time: int, w: Windows) -> list[list[Any]]:
    """Store a touch; return the retained orders it restates (empty if late or duplicate)."""
    touches = state["t"]
    if any(t[T_ID] == touch[T_ID] for t in touches):
        # A duplicate: changes nothing, but the orders it touched are emitted again so a
        # replay that lost its first output still writes it.
        return [o for o in state["o"] if _eligible(touch, o[O_TS], w)]
    late = is_late(touch[T_TS], stream_time, w)
    if late:
        touch[T_FROM] = stream_time - w.max_lateness_ms
    insort(touches, touch, key=lambda t: (t[T_TS], t[T_ID]))
    if len(touches) > w.max_touches:
        del touches[: len(touches) - w.max_touches]
    if late:
        return []
    return [o for o in state["o"] if _eligible(touch, o[O_TS], w)]


def _eligible(t: list[Any], order_ts: int, w: Windows) -> bool:
    if t[T_TS] > order_ts or order_ts < t[T_FROM]:
        return False
    window = w.click_ms if t[T_KIND] == "c" else w.view_ms
    return order_ts - t[T_TS] <= window


def add_order(state: State, order: dict[str, Any], stream_time: int, w: Windows) -> list[Any]:
    """Remember an order for restatement unless it is late; return its state record."""
    for o in state["o"]:
        if o[O_ID] == order["order_id"]:
            return o
    record = [
        order["ts"],
        order["order_id"],
        order["event_id"],
        (order.get("discount_code") or "").lower(),
        order["amount_minor"],
        order["currency"],
        [],
    ]
    if not is_late(order["ts"], stream_time, w):
        state["o"].append(record)
    return record


def expire(state: State, stream_time: int, w: Windows) -> None:
    """Drop orders past ``max_lateness`` and touches no future order can use."""
    horizon = stream_time - w.max_lateness_ms
    state["o"] = [o for o in state["o"] if o[O_TS] >= horizon]
    state["t"] = [t for t in state["t"] if t[T_TS] >= horizon - (w.click_ms if t[T_KIND] == "c" else w.view_ms)]


def is_empty(state: State) -> bool:
    return not state["t"] and not state["o"]


def attribute(state: State, order: list[Any], ref: ReferenceData, w: Windows) -> list[Row]:
    """Credit one order under ``last_click`` with the code-wins policy.

    The code on the order, when it belongs to an active referrer, takes all the credit;
    otherwise the last qualifying click; otherwise the last qualifying view.
    """
    order_ts = order[O_TS]
    qualifying = [t for t in state["t"] if _eligible(t, order_ts, w)]
    clicks = []
    views = []
    for t in qualifying:
        if t[T_KIND] == "c":
            referrer = ref.resolve(t[T_REF], t[T_TS])
            if referrer is not None:
                clicks.append((t, referrer))
        else:
            views.append((t, t[T_REF]))
    code_referrer = ref.resolve(order[O_CODE], order_ts) if order[O_CODE] else None
    version = 1 + len(clicks) + len(views) + (1 if code_referrer else 0)

    winner: tuple[str, str, str, str, int] | None = None  # id, type, touch, event, ts
    if code_referrer is not None:
        winner = (
            code_referrer.referrer_id,
            code_referrer.referrer_type,
            "code",
            order[O_EVENT],
            order_ts,
        )
    elif clicks:
        t, r = clicks[-1]
        winner = (r.referrer_id, r.referrer_type, "click", t[T_ID], t[T_TS])
    elif views:
        t, creator_id = views[-1]
        winner = (creator_id, "creator", "view", t[T_ID], t[T_TS])

    ever: list[str] = order[O_EVER]
    if winner is not None and winner[0] not in ever:
        ever.append(winner[0])
    rows: list[Row] = []
    for referrer_id in ever:
        won = winner is not None and winner[0] == referrer_id
        credit = 1.0 if won else 0.0
        amount = order[O_AMOUNT]
        rate = ref.commission_rate(referrer_id)
        rows.append(
            {
                "order_id": order[O_ID],
                "model": MODEL_LAST_CLICK,
                "referrer_id": referrer_id,
                "referrer_type": winner[1] if won and winner else "creator",
                "root_creator_id": referrer_id if won and winner and winner[1] == "creator" else "",
                "touch_type": winner[2] if won and winner else "",
                "touch_event_id": winner[3] if won and winner else "",
                "credit": credit,
                "revenue_minor": round(credit * amount),
                "commission_minor": round(credit * amount * rate),
                "currency": order[O_CURRENCY],
                "ctot_ms": order_ts - winner[4] if won and winner else 0,
                "status": "ok",
                "reasons": [],
                "generation": 0 if won and winner and winner[1] == "creator" else 1,
                "version": version,
                "ts": order_ts,
            }
        )
    return rows
