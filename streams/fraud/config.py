"""The fraud and leakage thresholds: one versioned file, ``deploy/fraud/rules.json``, and the
bot and coupon-site lists beside it, loaded and checked into a :class:`FraudConfig`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRAUD_DIR = Path(__file__).resolve().parent.parent.parent / "deploy" / "fraud"
SUPPORTED_VERSIONS = (1,)
#: what happens to a leaked code's redemptions without a touch of the code's referrer
LEAK_POLICIES = ("no_commission", "alert_only")


class FraudConfigError(ValueError):
    """The rules file cannot be used; the message is one line."""


@dataclass(frozen=True)
class FraudConfig:
    version: int
    block_below_ms: int
    flag_below_ms: int
    flood_max_clicks: int
    flood_window_ms: int
    bot_patterns: tuple[str, ...]
    leak_window_ms: int
    leak_min_redemptions: int
    leak_min_share: float
    leak_mad_factor: float
    leak_per_follower: float
    leak_policy: str
    coupon_domains: frozenset[str]
    refund_window_ms: int
    refund_max_rate: float
    refund_min_orders: int
    spike_lambda: float
    spike_z: float
    spike_min_orders: int
    cooldown_ms: int
    block_hold_ms: int


def _number(rules: dict[str, Any], rule: str, key: str, low: float, high: float) -> float:
    try:
        value = rules[rule][key]
    except (KeyError, TypeError):
        raise FraudConfigError(f"rule {rule!r} needs {key!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise FraudConfigError(f"rules.{rule}.{key} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _choice(rules: dict[str, Any], rule: str, key: str, allowed: tuple[str, ...]) -> str:
    value = rules.get(rule, {}).get(key) if isinstance(rules.get(rule), dict) else None
    if value not in allowed:
        raise FraudConfigError(f"rules.{rule}.{key} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise FraudConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FraudConfigError(f"{path} is not UTF-8 text") from None
    return [ln.strip().lower() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def load_config(path: Path = FRAUD_DIR / "rules.json") -> FraudConfig:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise FraudConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FraudConfigError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FraudConfigError(f"{path} is not JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise FraudConfigError(f"{path}: expected a JSON object with 'version' and 'rules'")
    if raw.get("version") not in SUPPORTED_VERSIONS:
        raise FraudConfigError(f"{path}: version must be one of {SUPPORTED_VERSIONS}, got {raw.get('version')!r}")
    rules = raw.get("rules")
    if not isinstance(rules, dict):
        raise FraudConfigError(f"{path}: 'rules' must be an object")
    for name in ("bot_click", "code_leakage"):  # read with .get below
        if not isinstance(rules.get(name, {}), dict):
            raise FraudConfigError(f"{path}: rules.{name} must be an object")
    block = _number(rules, "click_injection", "block_below_ms", 0, 3_600_000)
    flag = _number(rules, "click_injection", "flag_below_ms", 0, 86_400_000)
    if flag < block:
        raise FraudConfigError("rules.click_injection.flag_below_ms must not be below block_below_ms")
    folder = path.parent
    return FraudConfig(
        version=int(raw["version"]),
        block_below_ms=int(block),
        flag_below_ms=int(flag),
        flood_max_clicks=int(_number(rules, "click_flood", "max_clicks", 1, 1_000_000)),
        flood_window_ms=int(_number(rules, "click_flood", "window_ms", 1, 86_400_000)),
        bot_patterns=tuple(_lines(folder / str(rules.get("bot_click", {}).get("user_agents_file", "")))),
        leak_window_ms=int(_number(rules, "code_leakage", "window_ms", 60_000, 30 * 86_400_000)),
        leak_min_redemptions=int(_number(rules, "code_leakage", "min_redemptions", 1, 1_000_000)),
        leak_min_share=_number(rules, "code_leakage", "min_share", 0, 1),
        leak_mad_factor=_number(rules, "code_leakage", "mad_factor", 0, 100),
        leak_per_follower=_number(rules, "code_leakage", "max_redemptions_per_follower", 0, 1000),
        leak_policy=_choice(rules, "code_leakage", "policy", LEAK_POLICIES),
        coupon_domains=frozenset(_lines(folder / str(rules.get("code_leakage", {}).get("coupon_domains_file", "")))),
        refund_window_ms=int(_number(rules, "refund_rate", "window_ms", 86_400_000, 365 * 86_400_000)),
        refund_max_rate=_number(rules, "refund_rate", "max_rate", 0, 1),
        refund_min_orders=int(_number(rules, "refund_rate", "min_orders", 1, 1_000_000)),
        spike_lambda=_number(rules, "conversion_spike", "ewma_lambda", 0.01, 1),
        spike_z=_number(rules, "conversion_spike", "z", 0.5, 100),
        spike_min_orders=int(_number(rules, "conversion_spike", "min_orders", 1, 1_000_000)),
        cooldown_ms=int(_number({"rules": rules}, "rules", "cooldown_ms", 0, 7 * 86_400_000)),
        block_hold_ms=int(_number({"rules": rules}, "rules", "block_hold_ms", 0, 30 * 86_400_000)),
    )
