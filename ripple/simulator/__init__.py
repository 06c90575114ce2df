"""Synthetic storefront traffic with ground truth.

Creators with power-law follower counts post content; their audience views it, some
click a referral link or use the creator's discount code, some order — at the per-tier
rates publishers report (micro: 6–12 % engagement, 2–8 % conversion; macro: 1–3 %,
0.5–2 %). Orders arrive seconds to weeks after the click. Some customers become
advocates with their own codes and refer friends. A small share of messages is
malformed, and a few events are sent twice.

Honest traffic never looks like fraud (no bots, no click floods, orders at least a minute
after the click, no referral rings). ``SimConfig.inject`` adds labelled fraud on top — self
referrals, click injection, click floods, bots, leaked codes, referral rings, refund abuse,
conversion spikes — listed in ``truth["incidents"]``.

Honest traffic is drawn from one ``random.Random(seed)``, injected fraud from a second one:
the same seed and start give the same events, with or without injection (referral rings
aside, which change the chains). The ground truth (expected credits and last-click referrer
per order, with the effects of the SPEC §5 fraud rules) is computed here from the generated
events by a separate, straightforward implementation of SPEC §3 and §5, not by the engine.
"""

from ripple.simulator.kafka import PRODUCER_TUNING, batched, demo_stream, interleave, produce, write_out
from ripple.simulator.model import (
    HOUR_MS,
    INJECT_RULES,
    INJECT_TYPES,
    TIER_RATES,
    Dataset,
    Message,
    SimConfig,
    h,
    parse_inject,
    tier_of,
)
from ripple.simulator.program import generate
from ripple.simulator.truth import expected_excluded_clicks, expected_leakage

__all__ = [
    "HOUR_MS",
    "INJECT_RULES",
    "INJECT_TYPES",
    "PRODUCER_TUNING",
    "TIER_RATES",
    "Dataset",
    "Message",
    "SimConfig",
    "batched",
    "demo_stream",
    "expected_excluded_clicks",
    "expected_leakage",
    "generate",
    "h",
    "interleave",
    "parse_inject",
    "produce",
    "tier_of",
    "write_out",
]
