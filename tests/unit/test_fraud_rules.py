"""Fraud and leakage rules at and around every threshold (streams/fraud/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams import fraud

CFG = fraud.load_config()
T = 1_767_225_600_000


def test_shipped_config_loads_with_its_lists() -> None:
    assert CFG.version == 1
    assert "crawler" in CFG.bot_patterns and "retailmenot.com" in CFG.coupon_domains


@pytest.mark.parametrize(
    "ctot, decision",
    [(0, "block"), (4_999, "block"), (5_000, "flag"), (29_999, "flag"), (30_000, None), (3_600_000, None)],
)
def test_click_injection_thresholds(ctot: int, decision: str | None) -> None:
    assert fraud.click_injection(ctot, CFG) == decision


@pytest.mark.parametrize(
    "ua, bot",
    [
        ("Mozilla/5.0 (compatible; Googlebot/2.1)", True),
        ("python-requests/2.32", True),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X)", False),
        (None, False),
        ("", False),
    ],
)
def test_bot_user_agents(ua: str | None, bot: bool) -> None:
    assert fraud.is_bot(ua, CFG) is bot


@pytest.mark.parametrize(
    "domain, coupon",
    [
        ("retailmenot.com", True),
        ("www.RetailMeNot.com", True),
        ("notretailmenot.com", False),
        ("instagram.com", False),
        (None, False),
    ],
)
def test_coupon_referrer_domains(domain: str | None, coupon: bool) -> None:
    assert fraud.coupon_site(domain, CFG) is coupon


def test_click_flood_fires_on_the_21st_click_in_a_minute() -> None:
    state: dict = {}
    for i in range(20):
        assert fraud.flood_add(state, T + i * 1000, f"c{i}", f"v{i}", CFG) == []  # at the limit, not over
    over = fraud.flood_add(state, T + 20_000, "c20", "v20", CFG)
    assert len(over) == 21 and over[0] == [T, "c0", "v0"]
    assert fraud.flood_add(state, T + 21_000, "c21", "v21", CFG) == [[T + 21_000, "c21", "v21"]]
    assert fraud.flood_add(state, T + 21_000, "c21", "v21", CFG) == []  # a duplicate changes nothing
    calm: dict = {}
    for i in range(40):  # one click every 3 s: never more than 20 in a minute
        assert fraud.flood_add(calm, T + i * 3_000, f"d{i}", "v", CFG) == []


def test_click_flood_window_edges_are_exclusive_at_the_start() -> None:
    # 21 clicks spanning exactly 60 s: the window (t - 60 s, t] holds only 20 of them
    state: dict = {}
    times = [T + i * 3_000 for i in range(20)] + [T + 60_000]
    assert all(fraud.flood_add(state, t, f"c{i}", "v", CFG) == [] for i, t in enumerate(times))
    # one more just inside the minute: (T - 1, T + 59 999] holds 21, and so does
    # (T, T + 60 000] — every click of both windows is flooded
    assert len(fraud.flood_add(state, T + 59_999, "x", "v", CFG)) == 22


def test_click_flood_verdict_does_not_depend_on_arrival_order() -> None:
    clicks = [(T + (i * 7919) % 50_000, f"c{i}") for i in range(25)] + [(T + 200_000 + i, f"late{i}") for i in range(3)]
    forward: dict = {}
    backward: dict = {}
    got_f = {c[1] for ts, e in clicks for c in fraud.flood_add(forward, ts, e, "v", CFG)}
    got_b = {c[1] for ts, e in reversed(clicks) for c in fraud.flood_add(backward, ts, e, "v", CFG)}
    assert got_f == got_b == {e for _, e in clicks[:25]}


def leak_run(redemptions: list[tuple[int, bool, bool]], followers: int | None = None) -> dict | None:
    state: dict = {}
    found = None
    for i, (ts, untouched, coupon) in enumerate(redemptions):
        bucket = fraud.leak_add(state, f"o{i}", ts, untouched, coupon, CFG)
        found = fraud.leak_check(state, bucket, followers, CFG)
    return found


def test_code_leakage_needs_20_redemptions_and_a_share_over_80_percent() -> None:
    assert leak_run([(T + i, True, False) for i in range(19)]) is None  # 19: too few
    found = leak_run([(T + i, True, False) for i in range(20)])
    assert found is not None and found["share"] == 1.0 and found["signals"] == ["untouched_share"]
    # exactly 80 % without a touch is not over the threshold; 84 % is
    assert leak_run([(T + i, i % 5 != 0, False) for i in range(25)]) is None
    assert leak_run([(T + i, i not in (0, 10, 20, 24), False) for i in range(25)]) is not None


def test_code_leakage_buckets_are_six_hours_aligned() -> None:
    six_h = CFG.leak_window_ms
    start = (T // six_h + 1) * six_h
    # 15 before a bucket boundary and 15 after: neither bucket has 20
    split = [(start - 1 - i, True, False) for i in range(15)] + [(start + i, True, False) for i in range(15)]
    assert leak_run(split) is None


def test_code_leakage_baseline_raises_the_bar_for_a_code_that_is_always_untouched() -> None:
    six_h = CFG.leak_window_ms
    state: dict = {}
    for day, share in enumerate([0.9, 0.92, 0.88, 0.91]):  # a code mostly used without clicks
        for i in range(50):
            fraud.leak_add(state, f"d{day}-{i}", T + day * six_h, i < share * 50, False, CFG)
    now = T + 4 * six_h
    assert fraud.leak_baseline(state, fraud.leak_bucket(now, CFG), CFG) > 0.9
    for i in range(30):
        fraud.leak_add(state, f"n{i}", now + i, i % 10 != 0, False, CFG)
    assert fraud.leak_check(state, fraud.leak_bucket(now, CFG), None, CFG) is None  # 0.9: ordinary for it


def test_code_leakage_audience_signal() -> None:
    # 30 redemptions, all touched: not a share problem, but 1 000 followers explain only 10
    redemptions = [(T + i, False, False) for i in range(30)]
    found = leak_run(redemptions, followers=1_000)
    assert found is not None and found["signals"] == ["audience"]
    assert leak_run(redemptions, followers=100_000) is None


def test_leaked_bucket_blocks_untouched_redemptions_and_coupon_sites_always() -> None:
    state: dict = {}
    fraud.leak_add(state, "touched", T, False, False, CFG)
    fraud.leak_add(state, "plain", T, True, False, CFG)
    fraud.leak_add(state, "coupon", T, True, True, CFG)
    fraud.leak_add(state, "coupon-but-touched", T, False, True, CFG)
    bucket = fraud.leak_bucket(T, CFG)
    assert fraud.leak_blocked(state, bucket, leaking=False) == {"coupon"}
    assert fraud.leak_blocked(state, bucket, leaking=True) == {"coupon", "plain"}


@pytest.mark.parametrize("orders, refunded, fires", [(9, 9, False), (10, 3, False), (10, 4, True), (100, 31, True)])
def test_refund_rate(orders: int, refunded: int, fires: bool) -> None:
    assert (fraud.refund_rate(orders, refunded, CFG) is not None) is fires


def test_refund_rate_counts_the_last_30_days_of_credited_orders() -> None:
    state: dict = {}
    day = 86_400_000
    for i in range(10):
        fraud.activity_order(state, f"old{i}", T + i, True, CFG)
        fraud.activity_refund(state, f"old{i}")
    assert fraud.refund_check(state, CFG) is not None  # 10 orders, all refunded
    for i in range(10):  # 31 days later the old ones are outside the window
        fraud.activity_order(state, f"new{i}", T + 31 * day + i, True, CFG)
    fraud.activity_refund(state, "new0")
    assert fraud.refund_check(state, CFG) is None
    fraud.activity_order(state, "new1", T + 31 * day + 1, False, CFG)  # restated away
    assert "new1" not in state["o"]


def spike_hours(counts: list[int]) -> dict | None:
    state: dict = {}
    hour = fraud.HOUR_MS
    found = None
    for h, n in enumerate(counts):
        for i in range(n):
            fraud.activity_order(state, f"{h}-{i}", T + h * hour + i, True, CFG)
            found = fraud.spike_check(state, T + h * hour + i, CFG)
    return found


def test_conversion_spike_against_its_own_ewma() -> None:
    assert spike_hours([3, 4, 3, 5, 4, 3, 4, 9]) is None  # below 10 orders: never a spike
    found = spike_hours([3, 4, 3, 5, 4, 3, 4, 40])
    assert found is not None and found["orders"] == 40 and found["z"] > CFG.spike_z
    assert spike_hours([20, 22, 19, 21, 20, 23, 21, 22]) is None  # a steady seller
    assert spike_hours([1, 0, 30]) is None  # two hours of history are not enough
    assert spike_hours([1, 0, 0, 30]) is not None  # empty hours count as zero
    # an order ten days before (beyond the 168 h history) still makes the quiet week history
    assert spike_hours([1, *[0] * 239, 30]) is not None


def test_alerts_are_kept_once_per_rule_subject_and_cool_down() -> None:
    state: dict = {}
    first = fraud.candidate("bot_click", "warning", "cr-1", T, {"click_event_id": "c1"}, "cr-1")
    row = fraud.admit_alert(state, first, CFG)
    assert row is not None and row["alert_id"] == f"bot_click:cr-1:{T // CFG.cooldown_ms}"
    assert json.loads(row["evidence"]) == {"subject": "cr-1", "click_event_id": "c1"}
    assert fraud.admit_alert(state, {**first, "ts": T + 1}, CFG) is None  # same period
    higher = fraud.admit_alert(state, {**first, "severity": "high"}, CFG)
    assert higher is not None and higher["alert_id"] == row["alert_id"]  # rewritten, same id
    later = fraud.admit_alert(state, {**first, "ts": T + CFG.cooldown_ms}, CFG)
    assert later is not None and later["alert_id"] != row["alert_id"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 9}, "version"),
        ({"rules": {"click_injection": {"block_below_ms": -1}}}, "block_below_ms"),
        ({"rules": {"click_injection": {"block_below_ms": 9000, "flag_below_ms": 100}}}, "flag_below_ms"),
        ({"rules": {"code_leakage": {"policy": "sometimes"}}}, "policy"),
        ({"rules": {"click_flood": {"max_clicks": "20"}}}, "max_clicks"),
        ({"rules": {"refund_rate": {"max_rate": 1.5}}}, "max_rate"),
    ],
)
def test_a_bad_config_is_rejected_with_one_line(tmp_path: Path, change: dict, message: str) -> None:
    raw = json.loads((fraud.FRAUD_DIR / "rules.json").read_text())
    for key, value in change.items():
        if isinstance(value, dict):
            for rule, fields in value.items():
                raw[key][rule].update(fields)
        else:
            raw[key] = value
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(raw))
    for name in ("bot-user-agents.txt", "coupon-domains.txt"):
        (tmp_path / name).write_text((fraud.FRAUD_DIR / name).read_text())
    with pytest.raises(fraud.FraudConfigError, match=message) as exc:
        fraud.load_config(path)
    assert "\n" not in str(exc.value)


def test_not_json_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text("{version: 1")
    with pytest.raises(fraud.FraudConfigError, match="not JSON"):
        fraud.load_config(path)


def test_an_order_restated_away_after_its_hour_left_the_spike_history() -> None:
    state: dict = {}
    fraud.activity_order(state, "old", T, True, CFG)
    fraud.activity_order(state, "new", T + 10 * 86_400_000, True, CFG)  # 240 h later
    assert fraud.activity_order(state, "old", T, False, CFG)
    assert "old" not in state["o"]
