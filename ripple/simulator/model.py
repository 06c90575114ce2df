"""The simulator's program settings, messages and constants: tiers, plans, names, the fraud it can add."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from streams.fraud import FraudConfig

HOUR_MS = 3_600_000
MINUTE_MS = 60_000

TIER_RATES = {  # engagement (click per view) and conversion (order per click) ranges
    "nano": ((0.08, 0.15), (0.03, 0.09)),
    "micro": ((0.06, 0.12), (0.02, 0.08)),
    "macro": ((0.01, 0.03), (0.005, 0.02)),
}
TIER_PLANS = {
    "nano": {"rate": 0.15, "hold_days": 30, "override_rate": 0.03},
    "micro": {
        "rate": 0.10,
        "tiers": [{"min_conversions": 10, "rate": 0.12}, {"min_conversions": 50, "rate": 0.15}],
        "hold_days": 30,
        "override_rate": 0.02,
    },
    "macro": {"rate": 0.08, "flat_fee_minor": 50_000, "hold_days": 30},
}
PLATFORMS = ("instagram", "tiktok", "youtube", "twitch")
NICHES = ("beauty", "fitness", "gaming", "food", "travel", "tech", "fashion", "parenting")
NAMES = (
    "jane",
    "leo",
    "maya",
    "omar",
    "lina",
    "theo",
    "ivy",
    "noah",
    "zoe",
    "kai",
    "ana",
    "ravi",
    "emma",
    "yuki",
    "sam",
    "nia",
    "eli",
    "mila",
    "finn",
    "sara",
    "luca",
    "aria",
    "jon",
    "tara",
)
VIEW_KINDS = ("impression", "video_view", "story_view", "landing_view")
#: fraud the simulator can add (``SimConfig.inject``), and the SPEC §5 rule each one trips
INJECT_RULES = {
    "self_referral": "self_referral",
    "click_injection": "click_injection",
    "click_flood": "click_flood",
    "bot": "bot_click",
    "leakage": "code_leakage",
    "ring": "referral_ring",
    "refund_abuse": "refund_rate",
    "spike": "conversion_spike",
}
INJECT_TYPES = tuple(INJECT_RULES)
BOT_AGENTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "python-requests/2.31.0",
    "Mozilla/5.0 HeadlessChrome/120.0",
)
BROWSER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
)


def tier_of(followers: int) -> str:
    return "nano" if followers < 10_000 else "micro" if followers < 100_000 else "macro"


def h(*parts: object) -> str:
    """A stable opaque hash, as a storefront would send for identity fields."""
    return "h:" + hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=12).hexdigest()


@dataclass
class Message:
    topic: str
    key: str
    value: bytes
    event: dict[str, Any] | None  # None for a malformed message


@dataclass
class Dataset:
    reference: list[Message] = field(default_factory=list)  # codes and creators, sent first
    events: list[Message] = field(default_factory=list)  # in event-time order
    truth: dict[str, Any] = field(default_factory=dict)


@dataclass
class SimConfig:
    seed: int = 42
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    days: float = 14.0
    creators: int = 30
    views: int = 3000  # content views; clicks, orders and refunds follow from the rates
    anonymous_share: float = 0.15
    code_share: float = 0.45  # share of referred orders that use the creator's code
    organic_orders: float = 0.10  # organic orders, as a share of referred orders
    view_through: float = 0.002  # orders by viewers who never clicked
    second_creator: float = 0.10  # share of clickers who also click another creator
    advocate_share: float = 0.05  # organic customers who start a referral tree of their own
    #: offspring per customer node (Poisson mean) by the creator's chain class
    chain_k: dict[str, float] = field(default_factory=lambda: {"sub": 0.15, "near": 0.6, "super": 2.2})
    super_every: int = 10  # every 10th creator's audience refers super-critically, ...
    near_every: int = 10  # ... and every 10th (offset 5) near-critically
    max_generations: int = 7
    max_chain_nodes: int = 150
    ring_share: float = 0.0  # share of friend orders paid with an ancestor's card (fraud: see ``inject``)
    refund_share: float = 0.08
    malformed_share: float = 0.01
    duplicate_share: float = 0.01
    #: appended to creators' codes and link slugs, so several programs can share one stack
    code_tag: str = ""
    run_id: str = ""
    creator_prefix: str = ""  # keeps the same creators across demo windows
    #: fraud to add on top of the honest traffic (INJECT_TYPES), each ``inject_count`` times
    inject: tuple[str, ...] = ()
    inject_count: int = 3
    fraud: FraudConfig | None = None  # thresholds for the truth; None: streams.fraud.load_config()

    @property
    def prefix(self) -> str:
        return self.run_id or f"s{self.seed}"


def parse_inject(value: str) -> tuple[str, ...]:
    """``self_referral,bot`` or ``all`` -> the fraud types, in INJECT_TYPES order."""
    names = {part.strip() for part in value.split(",") if part.strip()}
    if "all" in names:
        return INJECT_TYPES
    unknown = sorted(names - set(INJECT_TYPES))
    if unknown or not names:
        raise ValueError(
            f"unknown fraud type{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown)) or repr(value)}: "
            "expected all or a comma list of " + ",".join(INJECT_TYPES)
        )
    return tuple(t for t in INJECT_TYPES if t in names)
