"""The stream's attribution logic against a batch reference, on shuffled simulated traffic.

The stream side runs the same per-event code as the visitors agent (``handle_event``),
with per-partition stream time, in an arrival order shuffled within ``max_lateness``.
The reference below sees every event at once and applies SPEC §3 directly.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ripple.simulator import SimConfig, generate
from streams import attribution as attr
from streams.partitioner import partition_for
from streams.reference import ReferenceData

DAY = 86_400_000
LATENESS = 10 * 60_000
W = attr.Windows(click_ms=30 * DAY, view_ms=DAY, max_lateness_ms=LATENESS)
MODELS = ("last_click", "first_click", "linear", "time_decay", "position_based")


def reference_credits(events: list[dict[str, Any]], codes: dict[str, dict[str, Any]], policy: str) -> dict:
    """Batch reference: every order credited from all of its visitor's touches at once."""

    def owner(ref: str | None, at: int) -> str | None:
        c = codes.get((ref or "").lower())
        if c is None or c.get("active") is False or (c.get("expires_ts") is not None and at >= c["expires_ts"]):
            return None
        return c["referrer_id"]

    def model_weights(model: str, ts: list[int], order_ts: int) -> list[float]:
        n = len(ts)
        if model == "last_click":
            return [1.0 if i == n - 1 else 0.0 for i in range(n)]
        if model == "first_click":
            return [1.0 if i == 0 else 0.0 for i in range(n)]
        if model == "linear":
            return [1 / n] * n
        if model == "time_decay":
            raw = [math.exp(-math.log(2) * (order_ts - t) / (7 * DAY)) for t in ts]
            return [r / sum(raw) for r in raw]
        if n < 3:
            return [1 / n] * n
        return [0.4 if i in (0, n - 1) else 0.2 / (n - 2) for i in range(n)]

    per_visitor: dict[str, dict[str, dict]] = defaultdict(dict)
    for e in events:
        if e.get("visitor_id"):
            per_visitor[e["visitor_id"]][e["event_id"]] = e
    out: dict[tuple[str, str], dict[str, float]] = {}
    for evs in per_visitor.values():
        ordered = sorted(evs.values(), key=lambda e: (e["ts"], e["event_id"]))
        for o in (e for e in ordered if "order_id" in e):
            ts = o["ts"]
            code = owner(o.get("discount_code"), ts)
            clicks = [
                (e["ts"], owner(e["ref"], e["ts"]))
                for e in ordered
                if "ref" in e and e["ts"] <= ts and ts - e["ts"] <= 30 * DAY
            ]
            clicks = [(t, r) for t, r in clicks if r]
            views = [
                (e["ts"], e["creator_id"])
                for e in ordered
                if "content_id" in e and e["ts"] <= ts and ts - e["ts"] <= DAY
            ]
            for model in MODELS:
                credit: dict[str, float] = defaultdict(float)
                if code and (policy == "code_wins" or not clicks):
                    credit[code] = 1.0
                else:
                    share = 0.5 if code and policy == "split" else 1.0
                    if code and policy == "split":
                        credit[code] += 0.5
                    touches = clicks or ([] if code else views)
                    if not touches:
                        out[(o["order_id"], model)] = dict(credit)
                        continue
                    for (_, r), w in zip(touches, model_weights(model, [t for t, _ in touches], ts), strict=True):
                        if w > 0:
                            credit[r] += share * w
                out[(o["order_id"], model)] = dict(credit)
    return out


def stream_credits(arrivals: list[tuple[str, dict[str, Any]]], ref: ReferenceData, policy: str) -> dict:
    """What the visitors agent writes, as the last version of each (order, model, referrer)."""
    states: dict[str, attr.State] = {}
    stream_time: dict[int, int] = defaultdict(int)
    final: dict[tuple[str, str, str], dict[str, Any]] = {}
    late = 0
    for topic, event in arrivals:
        visitor = event.get("visitor_id")
        partition = partition_for((visitor or event.get("creator_id", "")).encode(), 8)
        now = stream_time[partition]
        late += attr.is_late(event["ts"], now, W)
        stream_time[partition] = max(now, event["ts"])
        if visitor is None:
            continue
        state = states.setdefault(visitor, attr.new_state())
        for order, result in attr.handle_event(topic, event, state, now, W, ref, policy):
            for row in attr.rows_for(order, result, ref):
                key = (row["order_id"], row["model"], row["referrer_id"])
                if key not in final or final[key]["version"] <= row["version"]:
                    assert key not in final or final[key]["version"] < row["version"] or final[key] == row
                    final[key] = row
        attr.expire(state, stream_time[partition], W)
    assert late == 0, "the shuffle keeps every event within max_lateness"
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (order_id, model, referrer), row in final.items():
        if row["credit"] > 0:
            out[(order_id, model)][referrer] = row["credit"]
        else:
            out.setdefault((order_id, model), {})
    return out


def shuffled_within_lateness(events: list[tuple[str, dict[str, Any]]], seed: int) -> list[tuple[str, dict[str, Any]]]:
    # arrival key = ts + u with u < max_lateness: nothing is ever later than that behind stream time
    rng = random.Random(seed)
    keyed = [(e["ts"] + rng.randrange(LATENESS), i, (t, e)) for i, (t, e) in enumerate(events)]
    return [te for *_, te in sorted(keyed)]


def assert_same(stream: dict, reference: dict) -> None:
    orders_with_credit = {k for k, v in reference.items() if v}
    assert {k for k, v in stream.items() if v} == orders_with_credit
    for key in orders_with_credit:
        got, want = stream[key], reference[key]
        assert set(got) == set(want), key
        for r in want:
            assert math.isclose(got[r], want[r], abs_tol=1e-9), (key, r, got[r], want[r])


@pytest.fixture(scope="module")
def traffic() -> tuple[list[tuple[str, dict[str, Any]]], ReferenceData, dict[str, dict[str, Any]]]:
    ds = generate(SimConfig(seed=2024, views=52_000, creators=60, days=21))
    ref = ReferenceData()
    codes: dict[str, dict[str, Any]] = {}
    for m in ds.reference:
        assert m.event is not None
        ref.apply(m.topic, m.event)
        if m.topic == "codes":
            codes[m.event["code"].lower()] = m.event
    events = [(m.topic, m.event) for m in ds.events if m.event is not None and m.topic in ("views", "clicks", "orders")]
    assert len(events) >= 50_000
    return events, ref, codes


@pytest.mark.parametrize("policy", ["code_wins", "click_wins", "split"])
def test_stream_equals_batch_reference_on_shuffled_traffic(traffic: Any, policy: str) -> None:
    events, ref, codes = traffic
    reference = reference_credits([e for _, e in events], codes, policy)
    stream = stream_credits(shuffled_within_lateness(events, seed=7), ref, policy)
    assert_same(stream, reference)
    multi = sum(1 for (_, m), v in reference.items() if m == "linear" and len(v) > 1)
    assert multi > 20, "the traffic has multi-touch orders"


def test_simulator_truth_agrees_with_the_reference(traffic: Any) -> None:
    events, _, codes = traffic
    ds_truth = generate(SimConfig(seed=2024, views=52_000, creators=60, days=21)).truth["credits"]
    reference = reference_credits([e for _, e in events], codes, "code_wins")
    for (order_id, model), credit in reference.items():
        want = ds_truth[order_id].get(model, {})
        assert set(want) == set(credit) and all(math.isclose(want[r], credit[r], abs_tol=1e-9) for r in credit)


# -- properties ---------------------------------------------------------------------------
T0 = 1_767_225_600_000
REFS = ["jane", "leo", "JANE20", "cfriend", "nobody"]


def ref_data() -> ReferenceData:
    ref = ReferenceData()
    for code, owner, kind in [
        ("JANE20", "cr-jane", "creator"),
        ("jane", "cr-jane", "creator"),
        ("leo", "cr-leo", "creator"),
        ("CFRIEND", "cus-1", "customer"),
    ]:
        ref.apply("codes", {"code": code, "referrer_id": owner, "referrer_type": kind, "issued_ts": 0})
    return ref


event_strategy = st.lists(
    st.tuples(
        st.sampled_from(["clicks", "views", "orders"]),
        st.integers(min_value=0, max_value=3 * DAY),
        st.sampled_from(REFS),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


def to_events(spec: list[tuple[str, int, str, bool]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i, (topic, offset, ref, with_code) in enumerate(spec):
        ts = T0 + offset
        if topic == "clicks":
            ev = {"event_id": f"c{i}", "ts": ts, "visitor_id": "v", "ref": ref}
        elif topic == "views":
            ev = {
                "event_id": f"v{i}",
                "ts": ts,
                "visitor_id": "v",
                "creator_id": "cr-leo" if i % 2 else "cr-jane",
                "content_id": "p",
            }
        else:
            ev = {
                "event_id": f"o{i}",
                "ts": ts,
                "order_id": f"o{i}",
                "visitor_id": "v",
                "customer_id": "c",
                "amount_minor": 1000,
                "currency": "USD",
                **({"discount_code": ref} if with_code else {}),
            }
        out.append((topic, ev))
    return out


@settings(max_examples=150, deadline=None)
@given(spec=event_strategy, seed=st.integers(0, 10_000), policy=st.sampled_from(["code_wins", "click_wins", "split"]))
def test_properties_sum_to_one_no_future_touch_order_independent(spec: list, seed: int, policy: str) -> None:
    events = sorted(to_events(spec), key=lambda te: te[1]["ts"])
    in_order = stream_credits(events, ref_data(), policy)
    for credits in in_order.values():
        assert not credits or math.isclose(sum(credits.values()), 1.0, abs_tol=1e-9)
    shuffled = stream_credits(shuffled_within_lateness(events, seed), ref_data(), policy)
    assert_same(shuffled, {k: v for k, v in in_order.items()})
    # no touch after its order: every credited touch is at or before the order
    state = attr.new_state()
    for topic, ev in events:
        for order, result in attr.handle_event(topic, ev, state, 0, W, ref_data(), policy):
            for credits in result.credits.values():
                assert all(c.touch_ts <= order.ts for c in credits)
