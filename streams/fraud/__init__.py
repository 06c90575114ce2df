"""Fraud and code-leakage rules (SPEC §5): pure functions and small stateful detectors.

Thresholds come from one versioned file, ``deploy/fraud/rules.json`` (defaults from the
published rules in shared/reference/fraud-rules.md); the bot and coupon-site lists are data
files beside it. Nothing here talks to Kafka or ClickHouse. ``self_referral`` and
``referral_ring`` are decided in :mod:`streams.lineage`.

Detectors keep JSON-able state so they can live in the agents' tables; every verdict is a
function of the events seen, not of their arrival order, so replays reach the same one.
"""

from streams.fraud.activity import (
    HOUR_MS,
    SPIKE_HISTORY_HOURS,
    activity_order,
    activity_refund,
    refund_check,
    refund_rate,
    spike_check,
)
from streams.fraud.config import (
    FRAUD_DIR,
    LEAK_POLICIES,
    SUPPORTED_VERSIONS,
    FraudConfig,
    FraudConfigError,
    load_config,
)
from streams.fraud.leakage import (
    LEAK_HISTORY,
    leak_add,
    leak_baseline,
    leak_blocked,
    leak_bucket,
    leak_check,
    leak_open_buckets,
    leak_open_from,
    leak_prune,
)
from streams.fraud.rules import (
    RULE_SEVERITIES,
    SEVERITIES,
    admit_alert,
    alert_id,
    alert_period,
    candidate,
    click_injection,
    coupon_site,
    flood_add,
    is_bot,
)

__all__ = [
    "FRAUD_DIR",
    "HOUR_MS",
    "LEAK_HISTORY",
    "LEAK_POLICIES",
    "RULE_SEVERITIES",
    "SEVERITIES",
    "SPIKE_HISTORY_HOURS",
    "SUPPORTED_VERSIONS",
    "FraudConfig",
    "FraudConfigError",
    "activity_order",
    "activity_refund",
    "admit_alert",
    "alert_id",
    "alert_period",
    "candidate",
    "click_injection",
    "coupon_site",
    "flood_add",
    "is_bot",
    "leak_add",
    "leak_baseline",
    "leak_blocked",
    "leak_bucket",
    "leak_check",
    "leak_open_buckets",
    "leak_open_from",
    "leak_prune",
    "load_config",
    "refund_check",
    "refund_rate",
    "spike_check",
]
