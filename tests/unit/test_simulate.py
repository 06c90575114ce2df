"""The simulator: schema-valid output, determinism, and traffic shaped like the seeds."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import orjson
import pytest
from jsonschema import Draft202012Validator

from ripple.simulator import TIER_RATES, Dataset, SimConfig, generate, tier_of
from streams.events import SCHEMA_DIR
from streams.topics import INPUT_TOPICS

START = 1_767_225_600_000


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate(SimConfig(seed=11, start_ms=START, views=20_000, creators=40))


def validators() -> dict[str, Draft202012Validator]:
    out = {}
    for topic in INPUT_TOPICS:
        schema = json.loads((SCHEMA_DIR / f"{topic}.schema.json").read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        out[topic] = Draft202012Validator(schema)
    return out


def test_every_schema_is_draft_2020_12_and_its_example_validates() -> None:
    for topic, validator in validators().items():
        example = json.loads((SCHEMA_DIR / "examples" / f"{topic}.json").read_text())
        validator.validate(example)


def test_simulated_events_match_the_schemas(dataset: Dataset) -> None:
    vals = validators()
    checked = Counter()
    for msg in [*dataset.reference, *dataset.events]:
        if msg.event is None:
            continue
        errors = list(vals[msg.topic].iter_errors(orjson.loads(msg.value)))
        assert not errors, (msg.topic, msg.value, errors[0].message)
        checked[msg.topic] += 1
    assert set(checked) == set(INPUT_TOPICS)


def test_malformed_messages_fail_the_schemas_or_are_not_json(dataset: Dataset) -> None:
    vals = validators()
    bad = [m for m in dataset.events if m.event is None]
    assert bad, "the simulator sends some malformed messages"
    for msg in bad:
        try:
            value = orjson.loads(msg.value)
        except orjson.JSONDecodeError:
            continue
        future = isinstance(value.get("ts"), int) and value["ts"] > time.time() * 1000 + 86_400_000
        assert future or list(vals[msg.topic].iter_errors(value)), msg.value


def test_same_seed_same_events() -> None:
    a = generate(SimConfig(seed=5, start_ms=START, views=2000))
    b = generate(SimConfig(seed=5, start_ms=START, views=2000))
    c = generate(SimConfig(seed=6, start_ms=START, views=2000))
    valid = lambda ds: [m.value for m in ds.events if m.event is not None]  # noqa: E731
    assert valid(a) == valid(b)
    assert valid(a) != valid(c)
    assert a.truth["last_click"] == b.truth["last_click"]


def test_events_are_in_event_time_order_and_inside_the_period(dataset: Dataset) -> None:
    ts = [m.event["ts"] for m in dataset.events if m.event is not None]
    assert ts == sorted(ts)
    assert START <= ts[0] and ts[-1] < dataset.truth["end_ms"]


def test_creators_span_the_tiers_with_a_power_law(dataset: Dataset) -> None:
    followers = [m.event["followers"] for m in dataset.reference if m.topic == "creators"]
    tiers = Counter(tier_of(f) for f in followers)
    assert tiers["nano"] > tiers["micro"] > 0 and tiers["macro"] >= 1
    assert max(followers) > 20 * sorted(followers)[len(followers) // 2]  # heavy tail


def test_engagement_and_conversion_follow_the_tier_rates(dataset: Dataset) -> None:
    creators = {m.event["creator_id"]: m.event for m in dataset.reference if m.topic == "creators"}
    slug_owner = {m.event["code"].lower(): m.event["referrer_id"] for m in dataset.reference if m.topic == "codes"}
    views, clicks = Counter(), Counter()
    for m in dataset.events:
        if m.event is None:
            continue
        if m.topic == "views" and "visitor_id" in m.event:
            views[m.event["creator_id"]] += 1
        elif m.topic == "clicks" and m.event.get("utm_medium") == "social":
            clicks[slug_owner[m.event["ref"].lower()]] += 1
    per_tier = defaultdict(lambda: [0, 0])
    for cid, n in views.items():
        tier = tier_of(creators[cid]["followers"])
        per_tier[tier][0] += n
        per_tier[tier][1] += clicks[cid]
    for tier, (v, c) in per_tier.items():
        if v < 500:
            continue
        lo, hi = TIER_RATES[tier][0]
        # first clicks follow the tier's engagement; a share of clickers clicks a second creator
        assert lo * 0.8 <= c / v <= hi * 1.3, (tier, c / v)


def test_codes_look_like_creator_codes(dataset: Dataset) -> None:
    codes = [m.event["code"] for m in dataset.reference if m.topic == "codes" and m.event["referrer_type"] == "creator"]
    assert any(c.endswith("20") and c.isupper() for c in codes)


def test_ground_truth_covers_every_order_with_referrers_that_exist(dataset: Dataset) -> None:
    orders = {m.event["order_id"] for m in dataset.events if m.event is not None and m.topic == "orders"}
    truth = dataset.truth["last_click"]
    assert set(truth) == orders
    referrers = {m.event["referrer_id"] for m in dataset.reference if m.topic == "codes"}
    kinds = Counter(v["touch_type"] if v else None for v in truth.values())
    assert kinds["code"] and kinds["click"] and kinds[None], kinds
    assert all(v["referrer_id"] in referrers or v["touch_type"] == "view" for v in truth.values() if v)
    customer_referred = [v for v in truth.values() if v and v["referrer_id"].startswith("s11-cus-")]
    assert customer_referred, "advocates refer friends who buy"


def test_some_events_are_sent_twice(dataset: Dataset) -> None:
    ids = Counter(m.event["event_id"] for m in dataset.events if m.event is not None)
    assert any(n > 1 for n in ids.values())


def test_chain_k_shapes_the_trees() -> None:
    flat = generate(SimConfig(seed=3, start_ms=START, views=3000, chain_k={"sub": 0.0, "near": 0.0, "super": 0.0}))
    bushy = generate(SimConfig(seed=3, start_ms=START, views=3000, chain_k={"sub": 0.0, "near": 0.0, "super": 2.5}))
    depth = lambda ds: max((c["depth"] for c in ds.truth["chains"].values()), default=0)  # noqa: E731
    assert depth(flat) <= 1 < 3 <= depth(bushy)
    assert all(c["class"] == "super" for c in bushy.truth["chains"].values() if c["viral"])


def late_by(events: list[dict[str, object]], partitions: int = 8) -> int:
    """How far (ms) the most-behind event falls behind its partition's stream time, when
    sent in this order (key: visitor, as the worker's tasks see them)."""
    from streams.partitioner import partition_of

    stream: dict[int, int] = {}
    worst = 0
    for e in events:
        key = str(e.get("visitor_id") or e.get("creator_id") or e.get("order_id"))
        p = partition_of(key, partitions)
        ts = int(e["ts"])  # type: ignore[call-overload]
        worst = max(worst, stream.get(p, ts) - ts)
        stream[p] = max(stream.get(p, ts), ts)
    return worst


def test_demo_traffic_never_goes_back_in_time_nor_into_the_future() -> None:
    """Windows follow each other forward; the one that reaches the present is released in
    real time. No event is late behind what was sent before it (beyond the simulator's own
    order within a partition), and none is in the future when it is sent."""
    from ripple.simulator import demo_stream

    now = int(time.time() * 1000)
    cfg = SimConfig(seed=3, start_ms=now - 2 * 86_400_000 - 7_200_000, days=1.0, views=300, malformed_share=0)
    sent: list[dict[str, object]] = []
    groups = 0
    for group in demo_stream(cfg, lambda: time.time() * 1000 > now + 4000):
        at = time.time() * 1000
        events = [m.event for m in group if isinstance(m.event, dict) and "ts" in m.event]
        assert all(int(e["ts"]) <= at for e in events)  # type: ignore[call-overload]
        sent += events
        groups += 1
    assert groups >= 4  # two windows from the past, then the present: its reference data, its past hours
    assert late_by(sent) <= 10 * 60_000
