"""Fraud and code-leakage rules (SPEC §5): pure functions and small stateful detectors.

Thresholds come from one versioned file, ``deploy/fraud/rules.json`` (defaults from the
published rules in shared/reference/fraud-rules.md); the bot and coupon-site lists are data
files beside it. Nothing here talks to Kafka or ClickHouse. ``self_referral`` and
``referral_ring`` are decided in :mod:`streams.lineage`.

Not wired into the agents yet: the detectors are tested on their own.
"""

from __future__ import annotations

import json
import math
from bisect import insort
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

FRAUD_DIR = Path(__file__).resolve().parent.parent / "deploy" / "fraud"
SUPPORTED_VERSIONS = (1,)


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
    coupon_domains: frozenset[str]
    refund_window_ms: int
    refund_max_rate: float
    refund_min_orders: int
    spike_lambda: float
    spike_z: float
    spike_min_orders: int
    cooldown_ms: int


def _number(rules: dict[str, Any], rule: str, key: str, low: float, high: float) -> float:
    try:
        value = rules[rule][key]
    except (KeyError, TypeError):
        raise FraudConfigError(f"rule {rule!r} needs {key!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise FraudConfigError(f"rules.{rule}.{key} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise FraudConfigError(f"cannot read {path}: {exc.strerror}") from None
    return [ln.strip().lower() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def load_config(path: Path = FRAUD_DIR / "rules.json") -> FraudConfig:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise FraudConfigError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise FraudConfigError(f"{path} is not JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(raw, dict) or raw.get("version") not in SUPPORTED_VERSIONS:
        raise FraudConfigError(f"{path}: version must be one of {SUPPORTED_VERSIONS}, got {raw.get('version')!r}")
    rules = raw.get("rules")
    if not isinstance(rules, dict):
        raise FraudConfigError(f"{path}: 'rules' must be an object")
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
        coupon_domains=frozenset(_lines(folder / str(rules.get("code_leakage", {}).get("coupon_domains_file", "")))),
        refund_window_ms=int(_number(rules, "refund_rate", "window_ms", 86_400_000, 365 * 86_400_000)),
        refund_max_rate=_number(rules, "refund_rate", "max_rate", 0, 1),
        refund_min_orders=int(_number(rules, "refund_rate", "min_orders", 1, 1_000_000)),
        spike_lambda=_number(rules, "conversion_spike", "ewma_lambda", 0.01, 1),
        spike_z=_number(rules, "conversion_spike", "z", 0.5, 100),
        spike_min_orders=int(_number(rules, "conversion_spike", "min_orders", 1, 1_000_000)),
        cooldown_ms=int(_number({"c": rules}, "c", "cooldown_ms", 0, 7 * 86_400_000)),
    )


# -- per-event rules ----------------------------------------------------------------------
def click_injection(ctot_ms: int, cfg: FraudConfig) -> str | None:
    """Click-to-order time: ``block`` (the touch gets no credit) or ``flag``."""
    if ctot_ms < cfg.block_below_ms:
        return "block"
    if ctot_ms < cfg.flag_below_ms:
        return "flag"
    return None


def is_bot(user_agent: str | None, cfg: FraudConfig) -> bool:
    ua = (user_agent or "").lower()
    return any(p in ua for p in cfg.bot_patterns)


def coupon_site(referrer_domain: str | None, cfg: FraudConfig) -> bool:
    domain = (referrer_domain or "").lower().rstrip(".")
    return any(domain == d or domain.endswith("." + d) for d in cfg.coupon_domains)


# -- windowed detectors ---------------------------------------------------------------------
@dataclass
class ClickFlood:
    """Clicks per (ip_hash, referrer): more than ``max_clicks`` within ``window_ms``."""

    cfg: FraudConfig
    times: deque[tuple[int, str]] = field(default_factory=deque)

    def add(self, ts: int, event_id: str) -> list[str]:
        """Record a click; return the clicks of the window once it is over the limit."""
        insort(self.times, (ts, event_id))
        while self.times and self.times[0][0] <= ts - self.cfg.flood_window_ms:
            self.times.popleft()
        window = [e for t, e in self.times if t > ts - self.cfg.flood_window_ms]
        return window if len(window) > self.cfg.flood_max_clicks else []


@dataclass
class CodeLeakage:
    """Per code: the share of redemptions without a touch of the code's referrer over the
    window, against the code's own baseline (median + k·MAD of earlier windows)."""

    cfg: FraudConfig
    redemptions: deque[tuple[int, bool]] = field(default_factory=deque)  # (ts, had a touch)
    history: list[float] = field(default_factory=list)
    last_window_end: int = 0

    def add(self, ts: int, touched: bool) -> tuple[float, int, float] | None:
        """Record a redemption; return (share, redemptions, threshold) when it leaks."""
        self.redemptions.append((ts, touched))
        while self.redemptions and self.redemptions[0][0] <= ts - self.cfg.leak_window_ms:
            self.redemptions.popleft()
        n = len(self.redemptions)
        share = sum(1 for _, t in self.redemptions if not t) / n
        threshold = max(self.cfg.leak_min_share, self.baseline())
        if ts - self.last_window_end >= self.cfg.leak_window_ms:
            self.history.append(share)
            self.history = self.history[-28:]
            self.last_window_end = ts
        if n >= self.cfg.leak_min_redemptions and share > threshold:
            return share, n, threshold
        return None

    def baseline(self) -> float:
        if len(self.history) < 3:
            return 0.0
        m = median(self.history)
        mad = median(abs(x - m) for x in self.history)
        return m + self.cfg.leak_mad_factor * mad


def refund_rate(orders: int, refunded: int, cfg: FraudConfig) -> float | None:
    """The creator's refund rate over the window when it is over the limit."""
    if orders < cfg.refund_min_orders:
        return None
    rate = refunded / orders
    return rate if rate > cfg.refund_max_rate else None


@dataclass
class ConversionSpike:
    """Orders per hour against an EWMA of the creator's own past hours."""

    cfg: FraudConfig
    mean: float = 0.0
    var: float = 0.0
    hours: int = 0

    def close_hour(self, orders: int) -> float | None:
        """Feed one finished hour; return its z-score when it is a spike."""
        z = None
        if self.hours >= 3 and orders >= self.cfg.spike_min_orders:
            sd = math.sqrt(self.var) if self.var > 0 else 1.0
            score = (orders - self.mean) / max(sd, 1.0)
            if score > self.cfg.spike_z:
                z = score
        lam = self.cfg.spike_lambda
        diff = orders - self.mean
        self.mean += lam * diff
        self.var = (1 - lam) * (self.var + lam * diff * diff)
        self.hours += 1
        return z
