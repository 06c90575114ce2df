"""Edge cases of SPEC §3 as a table: one case, one comment, exact expected credits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from test_attribution import DAY, MIN, T0, click, order, reference, run, view

from streams.models import MODELS, weights

H = 3_600_000


def ref_with_override() -> Any:
    ref = reference()
    ref.apply(
        "creators", {"creator_id": "cr-leo", "handle": "leo", "plan": {"click_window_days": 7, "view_window_hours": 2}}
    )
    return ref


@dataclass
class Case:
    comment: str
    events: list[tuple[str, Any]]
    expected: dict[str, float]  # referrer -> credit of order o1
    model: str = "last_click"
    policy: str = "code_wins"
    override: bool = False
    touch_type: str | None = None


O = lambda ts, code=None: ("order", order(ts, code))  # noqa: E731, E741 - O for order reads best in the table
O2 = lambda ts: ("order", order(ts, oid="o2"))  # noqa: E731 - another order of the visitor (moves stream time)
C = lambda ts, ref, eid: ("touch", click(ts, ref, eid))  # noqa: E731
V = lambda ts, creator, eid: ("touch", view(ts, creator, eid))  # noqa: E731

five = [C(T0 + i * DAY, r, f"c{i}") for i, r in enumerate(["jane", "leo", "cfriend", "jane", "leo"])]
five_distinct_ts = [T0 + i * DAY for i in range(5)]
order_after_five = T0 + 5 * DAY


def decay(ages_days: list[float]) -> list[float]:
    raw = [2 ** (-a / 7) for a in ages_days]
    return [w / sum(raw) for w in raw]


d2 = decay([2, 1])
d5 = decay([5, 4, 3, 2, 1])

CASES = [
    # windows
    Case(
        "click exactly 30 days before the order is inside the window",
        [C(T0, "jane", "c"), O(T0 + 30 * DAY)],
        {"cr-jane": 1},
    ),
    Case("click 30 days and 1 ms before the order is outside", [C(T0, "jane", "c"), O(T0 + 30 * DAY + 1)], {}),
    Case("view exactly 24 h before the order is inside", [V(T0, "cr-leo", "v"), O(T0 + DAY)], {"cr-leo": 1}),
    Case("view 24 h and 1 ms before the order is outside", [V(T0, "cr-leo", "v"), O(T0 + DAY + 1)], {}),
    Case("click at the same millisecond as the order counts", [C(T0, "jane", "c"), O(T0)], {"cr-jane": 1}),
    Case("a click 1 ms after the order does not count", [C(T0 + 1, "jane", "c"), O(T0)], {}),
    Case(
        "creator override: leo's 7-day click window, 7 days is in",
        [C(T0, "leo", "c"), O(T0 + 7 * DAY)],
        {"cr-leo": 1},
        override=True,
    ),
    Case(
        "creator override: leo's click 7 days + 1 ms before is out",
        [C(T0, "leo", "c"), O(T0 + 7 * DAY + 1)],
        {},
        override=True,
    ),
    Case(
        "creator override applies to leo only; jane keeps 30 days",
        [C(T0, "jane", "c"), O(T0 + 20 * DAY)],
        {"cr-jane": 1},
        override=True,
    ),
    Case("creator override: leo's 2-hour view window", [V(T0, "cr-leo", "v"), O(T0 + 2 * H + 1)], {}, override=True),
    # precedence
    Case(
        "a click beats a later view",
        [C(T0, "jane", "c"), V(T0 + H, "cr-leo", "v"), O(T0 + 2 * H)],
        {"cr-jane": 1},
        touch_type="click",
    ),
    Case(
        "views only: the last view wins (view-through)",
        [V(T0, "cr-jane", "v1"), V(T0 + H, "cr-leo", "v2"), O(T0 + 2 * H)],
        {"cr-leo": 1},
        touch_type="view",
    ),
    Case("a code beats a view", [V(T0, "cr-leo", "v"), O(T0 + H, "JANE20")], {"cr-jane": 1}, touch_type="code"),
    Case(
        "a click whose ref is unknown is no touch; the view gets it",
        [C(T0, "nobody", "c"), V(T0, "cr-leo", "v"), O(T0 + H)],
        {"cr-leo": 1},
    ),
    # codes
    Case("codes are case-insensitive", [O(T0, "jAnE20")], {"cr-jane": 1}, touch_type="code"),
    Case("an expired code is no touch", [O(T0, "old10")], {}),
    Case("a code used 1 ms before it expires still counts", [O(T0 - 1, "OLD10")], {"cr-leo": 1}),
    Case("an inactive code is no touch; the click wins", [C(T0, "jane", "c"), O(T0 + H, "OFF")], {"cr-jane": 1}),
    Case("a click through an inactive slug is no touch", [C(T0, "off", "c"), O(T0 + H)], {}),
    # policies
    Case("code_wins: the code takes all", [C(T0, "leo", "c"), O(T0 + H, "JANE20")], {"cr-jane": 1}, policy="code_wins"),
    Case(
        "click_wins: the click takes all", [C(T0, "leo", "c"), O(T0 + H, "JANE20")], {"cr-leo": 1}, policy="click_wins"
    ),
    Case("click_wins: without a click the code takes all", [O(T0 + H, "JANE20")], {"cr-jane": 1}, policy="click_wins"),
    Case(
        "split: half to the code, half to the last click",
        [C(T0, "leo", "c"), O(T0 + H, "JANE20")],
        {"cr-jane": 0.5, "cr-leo": 0.5},
        policy="split",
    ),
    Case(
        "split, linear: half to the code, the rest over the clicks",
        [C(T0, "leo", "c1"), C(T0 + 1, "cfriend", "c2"), O(T0 + H, "JANE20")],
        {"cr-jane": 0.5, "cr-leo": 0.25, "cus-1": 0.25},
        policy="split",
        model="linear",
    ),
    Case(
        "split: a click by the code's owner adds to the code's half",
        [C(T0, "jane", "c"), O(T0 + H, "JANE20")],
        {"cr-jane": 1},
        policy="split",
    ),
    # models, one touch
    *[Case(f"{m}: one touch takes all", [C(T0, "jane", "c"), O(T0 + DAY)], {"cr-jane": 1}, model=m) for m in MODELS],
    # models, two touches
    Case("last_click on 2 touches", [C(T0, "jane", "a"), C(T0 + DAY, "leo", "b"), O(T0 + 2 * DAY)], {"cr-leo": 1}),
    Case(
        "first_click on 2 touches",
        [C(T0, "jane", "a"), C(T0 + DAY, "leo", "b"), O(T0 + 2 * DAY)],
        {"cr-jane": 1},
        model="first_click",
    ),
    Case(
        "linear on 2 touches",
        [C(T0, "jane", "a"), C(T0 + DAY, "leo", "b"), O(T0 + 2 * DAY)],
        {"cr-jane": 0.5, "cr-leo": 0.5},
        model="linear",
    ),
    Case(
        "position_based on 2 touches is 50/50",
        [C(T0, "jane", "a"), C(T0 + DAY, "leo", "b"), O(T0 + 2 * DAY)],
        {"cr-jane": 0.5, "cr-leo": 0.5},
        model="position_based",
    ),
    Case(
        "time_decay on 2 touches halves every 7 days",
        [C(T0, "jane", "a"), C(T0 + DAY, "leo", "b"), O(T0 + 2 * DAY)],
        {"cr-jane": d2[0], "cr-leo": d2[1]},
        model="time_decay",
    ),
    # models, five touches (jane, leo, cus-1, jane, leo)
    Case("last_click on 5 touches", [*five, O(order_after_five)], {"cr-leo": 1}),
    Case("first_click on 5 touches", [*five, O(order_after_five)], {"cr-jane": 1}, model="first_click"),
    Case(
        "linear on 5 touches sums per referrer",
        [*five, O(order_after_five)],
        {"cr-jane": 0.4, "cr-leo": 0.4, "cus-1": 0.2},
        model="linear",
    ),
    Case(
        "position_based on 5 touches: 40/20/40",
        [*five, O(order_after_five)],
        {"cr-jane": 0.4 + 0.2 / 3, "cr-leo": 0.2 / 3 + 0.4, "cus-1": 0.2 / 3},
        model="position_based",
    ),
    Case(
        "time_decay on 5 touches",
        [*five, O(order_after_five)],
        {"cr-jane": d5[0] + d5[3], "cr-leo": d5[1] + d5[4], "cus-1": d5[2]},
        model="time_decay",
    ),
    # duplicates and arrival order
    Case(
        "a duplicate click changes nothing",
        [C(T0, "jane", "c"), C(T0, "jane", "c"), O(T0 + H)],
        {"cr-jane": 1},
        model="linear",
    ),
    Case("a duplicate order changes nothing", [C(T0, "jane", "c"), O(T0 + H), O(T0 + H)], {"cr-jane": 1}),
    Case(
        "a click arriving after its order within lateness restates it",
        [O(T0 + MIN), C(T0, "jane", "c")],
        {"cr-jane": 1},
    ),
    Case("organic: no touch, no credit", [O(T0)], {}),
    # lateness: max_lateness is 10 minutes of stream time (the highest ts processed)
    Case(
        "a click exactly max_lateness behind stream time is on time: it restates the order",
        [O(T0 + 10 * MIN), C(T0, "jane", "c")],
        {"cr-jane": 1},
    ),
    Case(
        "a click 1 ms more than max_lateness behind is late: it restates nothing",
        [O(T0 + 10 * MIN + 1), C(T0, "jane", "c")],
        {},
    ),
    Case(
        "a late click does not restate an order that was final before it came",
        [O(T0 + 5 * MIN), O2(T0 + 20 * MIN), C(T0, "jane", "c")],
        {},
    ),
    Case(
        "a late click is kept and counts for an order after it arrived",
        [O2(T0 + 20 * MIN), C(T0, "jane", "c"), O(T0 + 25 * MIN)],
        {"cr-jane": 1},
    ),
    Case(
        "a late click does not count for an order seen before it, even when that order is restated",
        [O(T0 + 15 * MIN), O2(T0 + 20 * MIN), C(T0, "jane", "c"), V(T0 + 14 * MIN, "cr-leo", "v")],
        {"cr-leo": 1},
    ),
    Case(
        "a late click delivered again still restates nothing",
        [O(T0 + 15 * MIN), O2(T0 + 20 * MIN), C(T0, "jane", "c"), C(T0, "jane", "c")],
        {},
    ),
    Case(
        "a late order is still credited with the touches before it",
        [C(T0 - MIN, "jane", "c"), O2(T0 + 30 * MIN), O(T0)],
        {"cr-jane": 1},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.comment)
def test_case(case: Case) -> None:
    ref = ref_with_override() if case.override else reference()
    rows = run(case.events, ref, policy=case.policy, model=case.model)
    got = {r["referrer_id"]: r["credit"] for r in rows.values() if r["order_id"] == "o1"}
    assert set(got) == set(case.expected), got
    for referrer, credit in case.expected.items():
        assert math.isclose(got[referrer], credit, abs_tol=1e-9), (referrer, got[referrer], credit)
    if case.expected:
        assert math.isclose(sum(got.values()), 1.0, abs_tol=1e-9)
    if case.touch_type:
        assert {r["touch_type"] for r in rows.values()} == {case.touch_type}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("model", MODELS)
def test_weights_sum_to_one(model: str, n: int) -> None:
    ts = [T0 + i * H for i in range(n)]
    ws = weights(model, ts, T0 + n * H)
    assert len(ws) == n and math.isclose(sum(ws), 1.0, abs_tol=1e-12) and all(w >= 0 for w in ws)


def test_unknown_model_is_an_error() -> None:
    with pytest.raises(ValueError):
        weights("most_handsome", [T0], T0)
