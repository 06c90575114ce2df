"""Fraud and leakage rules at and around every threshold (streams/fraud.py)."""

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
    flood = fraud.ClickFlood(CFG)
    for i in range(20):
        assert flood.add(T + i * 1000, f"c{i}") == []  # 20 clicks: at the limit, not over
    over = flood.add(T + 20_000, "c20")
    assert len(over) == 21 and "c0" in over
    calm = fraud.ClickFlood(CFG)
    for i in range(40):  # one click every 3 s: never more than 20 in a minute
        assert calm.add(T + i * 3_000, f"d{i}") == []


def test_code_leakage_needs_20_redemptions_and_a_share_over_80_percent() -> None:
    leak = fraud.CodeLeakage(CFG)
    results = [leak.add(T + i * 1000, touched=False) for i in range(20)]
    assert results[:19] == [None] * 19  # 19 redemptions: too few
    assert results[19] is not None and results[19][0] == 1.0
    honest = fraud.CodeLeakage(CFG)
    # exactly 80 % without a touch is not over the threshold
    assert all(honest.add(T + i * 1000, touched=(i % 5 == 0)) is None for i in range(25))


def test_code_leakage_baseline_raises_the_bar_for_a_code_that_is_always_untouched() -> None:
    leak = fraud.CodeLeakage(CFG)
    leak.history = [0.9, 0.92, 0.88, 0.91]  # a code mostly used without clicks, every window
    assert leak.baseline() > 0.9
    results = [leak.add(T + i * 1000, touched=(i % 10 == 0)) for i in range(30)]
    assert results[-1] is None  # 0.9 share: ordinary for this code


@pytest.mark.parametrize("orders, refunded, fires", [(9, 9, False), (10, 3, False), (10, 4, True), (100, 31, True)])
def test_refund_rate(orders: int, refunded: int, fires: bool) -> None:
    assert (fraud.refund_rate(orders, refunded, CFG) is not None) is fires


def test_conversion_spike_against_its_own_ewma() -> None:
    spike = fraud.ConversionSpike(CFG)
    for orders in [3, 4, 3, 5, 4, 3, 4]:
        assert spike.close_hour(orders) is None
    assert spike.close_hour(9) is None  # below 10 orders: never a spike
    assert spike.close_hour(40) is not None
    steady = fraud.ConversionSpike(CFG)
    assert all(steady.close_hour(n) is None for n in [20, 22, 19, 21, 20, 23, 21, 22])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 9}, "version"),
        ({"rules": {"click_injection": {"block_below_ms": -1}}}, "block_below_ms"),
        ({"rules": {"click_injection": {"block_below_ms": 9000, "flag_below_ms": 100}}}, "flag_below_ms"),
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
