"""Fraud injection in the simulator: honest traffic stays clean, injected fraud is labelled
and its effects (SPEC §5) show in the ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from ripple.config import DAY_MS
from ripple.simulator import (
    HOUR_MS,
    INJECT_TYPES,
    Dataset,
    SimConfig,
    expected_excluded_clicks,
    expected_leakage,
    generate,
    parse_inject,
)
from streams import fraud
from streams.events import SCHEMA_DIR
from streams.topics import INPUT_TOPICS

START = 1_767_225_600_000
ROOT = Path(__file__).resolve().parents[2]
FCFG = fraud.load_config()
CREATOR_RULES = ("self_referral", "click_injection", "bot_click", "refund_rate", "conversion_spike")


def valid_events(ds: Dataset, topic: str | None = None) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for m in ds.events:
        if m.event is not None and (topic is None or m.topic == topic):
            seen.setdefault(m.event["event_id"], {**m.event, "_topic": m.topic})
    return list(seen.values())


def creators(ds: Dataset) -> dict[str, dict[str, Any]]:
    return {m.event["creator_id"]: m.event for m in ds.reference if m.event is not None and m.topic == "creators"}


def codes(ds: Dataset) -> dict[str, dict[str, Any]]:
    return {m.event["code"].lower(): m.event for m in ds.reference if m.event is not None and m.topic == "codes"}


@pytest.fixture(scope="module")
def honest() -> list[Dataset]:
    return [generate(SimConfig(seed=seed, start_ms=START)) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def injected() -> Dataset:
    return generate(SimConfig(seed=5, start_ms=START, inject=INJECT_TYPES))


def by_rule(ds: Dataset) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for incident in ds.truth["incidents"]:
        out[incident["rule"]].append(incident)
    return out


# -- honest traffic ---------------------------------------------------------------------------
def test_honest_traffic_has_no_bot_and_no_fast_click(honest: list[Dataset]) -> None:
    for ds in honest:
        clicks = valid_events(ds, "clicks")
        assert clicks and not [c for c in clicks if fraud.is_bot(c.get("user_agent"), FCFG)]
        by_visitor: dict[str, list[int]] = defaultdict(list)
        for c in clicks:
            by_visitor[c["visitor_id"]].append(c["ts"])
        for order in valid_events(ds, "orders"):
            gaps = [order["ts"] - ts for ts in by_visitor[order["visitor_id"]] if ts <= order["ts"]]
            assert all(gap >= 60_000 for gap in gaps), (order["order_id"], gaps)


def test_honest_traffic_trips_no_fraud_rule(honest: list[Dataset]) -> None:
    for ds in honest:
        events = [e for e in valid_events(ds) if e["_topic"] in ("views", "clicks", "orders")]
        assert expected_excluded_clicks(events, codes(ds), FCFG) == {}
        assert ds.truth["excluded_clicks"] == {}
        assert ds.truth["leaking_buckets"] == []
        assert ds.truth["blocked_orders"] == {}
        assert ds.truth["incidents"] == [] and ds.truth["rings"] == [] and ds.truth["inject"] == []
        assert not [o for o in valid_events(ds, "orders") if fraud.coupon_site(o.get("referrer_domain"), FCFG)]


def test_honest_events_are_the_same_with_and_without_injection() -> None:
    cfg = {"seed": 4, "start_ms": START, "views": 2000}
    plain = generate(SimConfig(**cfg))
    fraudulent = generate(SimConfig(**cfg, inject=tuple(t for t in INJECT_TYPES if t != "ring")))
    honest_ids = {m.event["event_id"] for m in plain.events if m.event is not None}
    assert [m.value for m in plain.events if m.event is not None] == [
        m.value for m in fraudulent.events if m.event is not None and m.event["event_id"] in honest_ids
    ]
    assert len(valid_events(fraudulent)) > len(honest_ids)
    assert plain.reference == fraudulent.reference
    # honest orders keep their credit
    assert {o: v for o, v in fraudulent.truth["last_click"].items() if o in plain.truth["last_click"]} == plain.truth[
        "last_click"
    ]
    # rings change the chains, but nothing before them
    ringed = generate(SimConfig(**cfg, inject=("ring",)))
    views = lambda ds: valid_events(ds, "views")  # noqa: E731  (duplicates are drawn after the chains)
    assert views(ringed) == views(plain)
    assert ringed.truth["rings"] and not plain.truth["rings"]


# -- incidents --------------------------------------------------------------------------------
def test_every_type_has_its_incidents(injected: Dataset) -> None:
    rules = by_rule(injected)
    assert injected.truth["inject"] == list(INJECT_TYPES)
    cr, cd = creators(injected), codes(injected)
    for rule in (*CREATOR_RULES, "click_flood", "code_leakage"):
        assert len(rules[rule]) == 3, rule
    assert len(rules["referral_ring"]) >= 1
    for rule in CREATOR_RULES:
        assert all(i["subject"] in cr and i["subject"] == i["referrer_id"] for i in rules[rule])
    # a different creator per incident where possible
    assert len({i["referrer_id"] for r in CREATOR_RULES for i in rules[r]}) == 3 * len(CREATOR_RULES)
    for i in rules["click_flood"]:
        ip, _, creator = i["subject"].partition("|")
        assert ip.startswith("h:") and creator == i["referrer_id"] in cr
    for i in rules["code_leakage"]:
        assert i["subject"] == i["code"].lower() and cd[i["subject"]]["referrer_id"] == i["referrer_id"]
    for i in rules["referral_ring"]:
        assert i["subject"] == i["referrer_id"] and i["subject"].startswith(f"s{injected.truth['seed']}-cus-")
    assert sorted(o for i in rules["referral_ring"] for o in i["events"]) == injected.truth["rings"]


def test_injected_events_match_the_schemas_and_stay_in_time_order(injected: Dataset) -> None:
    vals = {t: Draft202012Validator(json.loads((SCHEMA_DIR / f"{t}.schema.json").read_text())) for t in INPUT_TOPICS}
    for m in injected.events:
        if m.event is not None:
            assert not list(vals[m.topic].iter_errors(orjson.loads(m.value))), m.value
    ts = [m.event["ts"] for m in injected.events if m.event is not None]
    assert ts == sorted(ts) and START <= ts[0] and ts[-1] < injected.truth["end_ms"]


def test_injected_counts_follow_inject_count() -> None:
    ds = generate(SimConfig(seed=6, start_ms=START, inject=("bot", "spike"), inject_count=2))
    assert Counter(i["rule"] for i in ds.truth["incidents"]) == {"bot_click": 2, "conversion_spike": 2}


# -- effects on the truth -------------------------------------------------------------------
def test_bot_and_flood_clicks_are_no_touch(injected: Dataset) -> None:
    rules = by_rule(injected)
    excluded, last_click, credits = (injected.truth[k] for k in ("excluded_clicks", "last_click", "credits"))
    for rule, label in (("bot_click", "bot_click"), ("click_flood", "click_flood")):
        for incident in rules[rule]:
            clicks = [e for e in incident["events"] if "-c-" in e]
            orders = [e for e in incident["events"] if "-ord-" in e]
            assert clicks and all(excluded[c] == label for c in clicks)
            assert orders and all(last_click[o] is None and credits[o] == {} for o in orders)
    assert len([1 for v in excluded.values() if v == "click_flood"]) == 3 * 40


def test_injected_clicks_are_blocked_or_only_flagged(injected: Dataset) -> None:
    events = {e["event_id"]: e for e in valid_events(injected)}
    orders = {e["order_id"]: e for e in events.values() if e["_topic"] == "orders"}
    last_click, credits = injected.truth["last_click"], injected.truth["credits"]
    for incident in by_rule(injected)["click_injection"]:
        pairs = list(zip(incident["events"][::2], incident["events"][1::2], strict=True))
        blocked = flagged = 0
        for click_id, order_id in pairs:
            gap = orders[order_id]["ts"] - events[click_id]["ts"]
            if gap < FCFG.block_below_ms:
                blocked += 1
                assert last_click[order_id] is None and credits[order_id] == {}
            else:
                flagged += 1
                assert gap < FCFG.flag_below_ms
                assert last_click[order_id] == {"referrer_id": incident["referrer_id"], "touch_type": "click"}
                assert credits[order_id]["last_click"] == {incident["referrer_id"]: 1.0}
        assert (blocked, flagged) == (6, 2)


def test_self_referral_and_rings_are_blocked_and_earn_no_place(injected: Dataset) -> None:
    blocked, last_click, parents = (injected.truth[k] for k in ("blocked_orders", "last_click", "chain_parents"))
    orders = {e["order_id"]: e for e in valid_events(injected, "orders")}
    for incident in by_rule(injected)["self_referral"]:
        assert len(incident["events"]) == 3
        for o in incident["events"]:
            assert blocked[o] == "self_referral"
            assert last_click[o] == {"referrer_id": incident["referrer_id"], "touch_type": "code"}
            assert orders[o]["customer_id"] not in parents
    for o in injected.truth["rings"]:
        assert blocked[o] == "referral_ring"
    assert set(blocked.values()) == {"self_referral", "referral_ring", "code_leakage"}


def test_leaked_redemptions_are_blocked(injected: Dataset) -> None:
    blocked, last_click = injected.truth["blocked_orders"], injected.truth["last_click"]
    leaking = {(b["code"], b["bucket"]) for b in injected.truth["leaking_buckets"]}
    orders = {e["order_id"]: e for e in valid_events(injected, "orders")}
    for incident in by_rule(injected)["code_leakage"]:
        ids = incident["events"]
        assert 40 <= len(ids) <= 60
        buckets = {orders[o]["ts"] // FCFG.leak_window_ms for o in ids}
        assert len(buckets) == 1 and (incident["subject"], buckets.pop()) in leaking
        assert all(
            blocked[o] == "code_leakage" and last_click[o]["referrer_id"] == incident["referrer_id"] for o in ids
        )
        coupon = [o for o in ids if fraud.coupon_site(orders[o].get("referrer_domain"), FCFG)]
        assert len(coupon) == round(0.6 * len(ids))
        assert min(orders[o]["ts"] for o in ids) >= (START + injected.truth["end_ms"]) // 2 - FCFG.leak_window_ms


def test_refund_abuse_pushes_the_refund_rate_over_60_percent(injected: Dataset) -> None:
    refunded = {e["order_id"] for e in valid_events(injected, "refunds")}
    last_click = injected.truth["last_click"]
    for incident in by_rule(injected)["refund_rate"]:
        mine = [o for o, v in last_click.items() if v and v["referrer_id"] == incident["referrer_id"]]
        assert len(mine) >= FCFG.refund_min_orders
        assert sum(1 for o in mine if o in refunded) / len(mine) >= 0.6


def test_spike_is_thirty_orders_in_an_hour_after_earlier_orders(injected: Dataset) -> None:
    orders = {e["order_id"]: e for e in valid_events(injected, "orders")}
    last_click = injected.truth["last_click"]
    for incident in by_rule(injected)["conversion_spike"]:
        ids = [e for e in incident["events"] if "-ord-" in e]
        assert len(ids) == 30
        times = [orders[o]["ts"] for o in ids]
        assert max(times) - min(times) < HOUR_MS
        assert all(last_click[o] == {"referrer_id": incident["referrer_id"], "touch_type": "click"} for o in ids)
        earlier = [
            o["ts"]
            for oid, o in orders.items()
            if (last_click[oid] or {}).get("referrer_id") == incident["referrer_id"] and oid not in ids
        ]
        assert earlier and min(earlier) <= min(times) - 3 * HOUR_MS


# -- the truth functions on small cases ----------------------------------------------------------
CODES = {"jane": {"code": "jane", "referrer_id": "cr-jane", "referrer_type": "creator", "active": True}}


def click(i: int, ts: int, ip: str = "h:ip-1", ua: str = "Mozilla/5.0") -> dict[str, Any]:
    return {"event_id": f"c{i:03d}", "ts": ts, "visitor_id": f"v{i}", "ref": "jane", "ip_hash": ip, "user_agent": ua}


def test_flood_needs_more_than_the_limit_inside_one_window() -> None:
    limit, window = FCFG.flood_max_clicks, FCFG.flood_window_ms
    exact = [click(i, START + i * 100) for i in range(limit)]
    assert expected_excluded_clicks(exact, CODES, FCFG) == {}
    over = [*exact, click(limit, START + limit * 100)]
    assert set(expected_excluded_clicks(over, CODES, FCFG)) == {c["event_id"] for c in over}
    spread = [click(i, START + i * (window // limit + 1)) for i in range(3 * limit)]
    assert expected_excluded_clicks(spread, CODES, FCFG) == {}
    other_ips = [click(i, START + i * 100, ip=f"h:ip-{i % 2}") for i in range(limit + 1)]
    assert expected_excluded_clicks(other_ips, CODES, FCFG) == {}
    bots = [click(1, START, ua="python-requests/2.31.0")]
    assert expected_excluded_clicks(bots, CODES, FCFG) == {"c001": "bot_click"}


def test_leakage_uses_the_code_history_and_touches() -> None:
    def order(i: int, ts: int) -> dict[str, Any]:
        return {"event_id": f"o{i}", "order_id": f"ord{i}", "ts": ts, "visitor_id": f"v{i}", "discount_code": "JANE"}

    window = FCFG.leak_window_ms
    base = (START // window + 1) * window
    n = FCFG.leak_min_redemptions
    events: list[dict[str, Any]] = [order(i, base + i * 1000) for i in range(n)]
    events.append({**click(0, base - DAY_MS), "visitor_id": "v0"})  # one touched redemption
    events.append({"event_id": "x", "ts": base + 5000, "order_id": "ordx", "visitor_id": "vx"})  # no code
    blocked, leaking = expected_leakage(events, CODES, set(), FCFG, {})
    assert leaking == [{"code": "jane", "bucket": base // window, "redemptions": n, "untouched": n - 1}]
    assert set(blocked) == {f"ord{i}" for i in range(1, n)}
    # the same click, excluded (a bot, say), no longer counts as a touch
    blocked, _ = expected_leakage(events, CODES, {"c000"}, FCFG, {})
    assert "ord0" in blocked
    # one redemption fewer: no leak, only coupon-site redemptions are blocked
    few = [*events[1 : n - 1], {**order(99, base + 99), "referrer_domain": "www.retailmenot.com"}]
    blocked, leaking = expected_leakage(few, CODES, set(), FCFG, {})
    assert leaking == [] and "ord99" in blocked


# -- CLI ----------------------------------------------------------------------------------------
def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ripple", "simulate", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_parse_inject() -> None:
    assert parse_inject("all") == INJECT_TYPES
    assert parse_inject("spike, bot") == ("bot", "spike")
    with pytest.raises(ValueError, match="nope"):
        parse_inject("bot,nope")


def test_cli_rejects_an_unknown_fraud_type(tmp_path: Path) -> None:
    done = run("--out", str(tmp_path / "out"), "--inject", "nope")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "nope" in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_writes_incidents(tmp_path: Path) -> None:
    done = run("--out", str(tmp_path), "--inject", "all", "--inject-count", "1", "--start", "2026-01-01")
    assert done.returncode == 0, done.stderr
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert truth["inject"] == list(INJECT_TYPES)
    assert {i["rule"] for i in truth["incidents"]} == {
        "self_referral",
        "click_injection",
        "click_flood",
        "bot_click",
        "code_leakage",
        "referral_ring",
        "refund_rate",
        "conversion_spike",
    }
    assert truth["blocked_orders"] and truth["excluded_clicks"]
