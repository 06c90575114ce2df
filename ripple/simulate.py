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

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import orjson

from ripple.config import DAY_MS
from streams import fraud
from streams.fraud import FraudConfig
from streams.kafka import PLAINTEXT, Arrays, KafkaSecurity, producer_config
from streams.partitioner import partition_for as murmur2_partition

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


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; small means only."""
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _lognormal_ms(rng: random.Random, median_ms: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, median_ms * math.exp(rng.gauss(0, sigma)))))


def generate(cfg: SimConfig) -> Dataset:
    inject = parse_inject(",".join(cfg.inject)) if cfg.inject else ()
    fcfg = cfg.fraud or fraud.load_config()
    rng = random.Random(cfg.seed)
    p = cfg.prefix
    cp = cfg.creator_prefix or p
    end_ms = cfg.start_ms + int(cfg.days * DAY_MS)
    ds = Dataset()
    codes: dict[str, dict[str, Any]] = {}
    events: list[tuple[int, int, str, str, dict[str, Any]]] = []
    seq = 0

    def emit(topic: str, key: str, event: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        events.append((event["ts"], seq, topic, key, event))

    counters: dict[str, int] = {}

    def next_id(kind: str) -> str:
        counters[kind] = counters.get(kind, 0) + 1
        return f"{p}-{kind}-{counters[kind]:07d}"

    # -- creators and their codes ----------------------------------------------------
    creators: list[dict[str, Any]] = []
    crng = random.Random(f"creators-{cp}")
    # stratified draws from a Pareto(0.75) over 1k+ followers: mostly nano, some micro,
    # a few macro, whatever the number of creators
    strata = [(k + crng.random()) / cfg.creators for k in range(cfg.creators)]
    crng.shuffle(strata)
    for i in range(cfg.creators):
        followers = int(min(2_000_000, 1000 * (1 - strata[i]) ** (-1 / 0.75)))
        handle = f"{NAMES[i % len(NAMES)]}{i // len(NAMES) or ''}"
        creator_id = f"{cp}-cr-{handle}"
        tier = tier_of(followers)
        profile: dict[str, Any] = {
            "creator_id": creator_id,
            "handle": handle,
            "platform": crng.choice(PLATFORMS),
            "followers": followers,
            "niche": crng.choice(NICHES),
            "email_hash": h(cp, "creator-email", handle),
            "payment_hash": h(cp, "creator-pay", handle),
            "device_ids": [f"{cp}-dev-cr-{i}"],
            "plan": TIER_PLANS[tier],
        }
        eng_lo, eng_hi = TIER_RATES[tier][0]
        conv_lo, conv_hi = TIER_RATES[tier][1]
        creators.append(
            {
                **profile,
                "tier": tier,
                "engagement": crng.uniform(eng_lo, eng_hi),
                "conversion": crng.uniform(conv_lo, conv_hi),
                "code": f"{handle.upper()}20{cfg.code_tag}",
                "slug": f"{handle}{cfg.code_tag.lower()}",
                "weight": followers**0.6,
                "chain_class": "super" if i % cfg.super_every == 1 else "near" if i % cfg.near_every == 6 else "sub",
            }
        )
        ds.reference.append(Message("creators", creator_id, orjson.dumps(profile), profile))
        issued = cfg.start_ms - 30 * DAY_MS
        for name, pct in ((creators[-1]["code"], 20), (creators[-1]["slug"], None)):
            rec: dict[str, Any] = {
                "code": name,
                "referrer_id": creator_id,
                "referrer_type": "creator",
                "issued_ts": issued,
                "active": True,
                "platform": profile["platform"],
                "discount_pct": pct,
                "landing_url": f"https://shop.example/?ref={name}",
            }
            codes[name.lower()] = rec
        if i % 7 == 3:  # an old code that expired before the run, still in circulation
            old = f"{handle.upper()}10{cfg.code_tag}"
            codes[old.lower()] = {
                "code": old,
                "referrer_id": creator_id,
                "referrer_type": "creator",
                "issued_ts": issued - 60 * DAY_MS,
                "active": True,
                "expires_ts": cfg.start_ms,
                "discount_pct": 10,
            }
            creators[-1]["expired_code"] = old
        if i % 11 == 5:  # a deactivated code
            off = f"{handle.upper()}OFF{cfg.code_tag}"
            codes[off.lower()] = {
                "code": off,
                "referrer_id": creator_id,
                "referrer_type": "creator",
                "issued_ts": issued,
                "active": False,
                "discount_pct": 15,
            }
            creators[-1]["inactive_code"] = off
    for rec in codes.values():
        ds.reference.append(Message("codes", str(rec["code"]), orjson.dumps(rec), rec))

    weights = [c["weight"] for c in creators]
    visitors: list[str] = []
    customers: dict[str, str] = {}  # visitor -> customer id
    orders_by_visitor: dict[str, int] = {}

    def order_event(visitor: str, ts: int, code: str | None, r: random.Random = rng) -> dict[str, Any]:
        customer = customers.setdefault(visitor, next_id("cus"))
        n_prev = orders_by_visitor.get(visitor, 0)
        orders_by_visitor[visitor] = n_prev + 1
        gross = r.choice((1999, 2499, 3499, 4999, 5999, 7999, 12999))
        discount = 0
        if code:
            pct = codes.get(code.lower(), {}).get("discount_pct") or 0
            discount = int(gross * pct / 100)
        ev: dict[str, Any] = {
            "event_id": next_id("o"),
            "ts": ts,
            "order_id": next_id("ord"),
            "visitor_id": visitor,
            "customer_id": customer,
            "amount_minor": gross - discount,
            "currency": "USD",
            "is_new_customer": n_prev == 0,
            "email_hash": h(p, "email", customer),
            "payment_hash": h(p, "pay", customer),
            "device_id": f"{p}-dev-{visitor}",
            "ip_hash": h(p, "ip", visitor),
            "items": [{"sku": f"SKU-{r.randint(1, 40)}", "qty": 1, "price_minor": gross}],
        }
        if code:
            ev["discount_code"] = code
            ev["discount_minor"] = discount
        return ev

    def click_event(
        visitor: str, ts: int, ref: str, creator: dict[str, Any], ip_hash: str = "", user_agent: str = ""
    ) -> dict[str, Any]:
        return {
            "event_id": next_id("c"),
            "ts": ts,
            "visitor_id": visitor,
            "ref": ref,
            "utm_source": creator["platform"],
            "utm_medium": "social",
            "utm_campaign": "spring",
            "ip_hash": ip_hash or h(p, "ip", visitor),
            "user_agent": user_agent or "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X)",
            "referrer_domain": f"{creator['platform']}.com",
        }

    def delay_to_order() -> int:
        # seconds to weeks; a few beyond the 30-day click window
        return _lognormal_ms(rng, 3 * HOUR_MS, 2.2, MINUTE_MS, 45 * DAY_MS)

    referred_orders = 0
    for _ in range(cfg.views):
        creator = rng.choices(creators, weights)[0]
        ts = rng.randint(cfg.start_ms, end_ms - 1)
        content = f"{creator['handle']}-post-{rng.randint(1, 12)}"
        anonymous = rng.random() < cfg.anonymous_share
        if anonymous:
            emit(
                "views",
                creator["creator_id"],
                {
                    "event_id": next_id("v"),
                    "ts": ts,
                    "creator_id": creator["creator_id"],
                    "content_id": content,
                    "platform": creator["platform"],
                    "kind": "impression",
                },
            )
            continue
        if visitors and rng.random() < 0.2:
            visitor = rng.choice(visitors)
        else:
            visitor = next_id("vis")
            visitors.append(visitor)
        emit(
            "views",
            visitor,
            {
                "event_id": next_id("v"),
                "ts": ts,
                "creator_id": creator["creator_id"],
                "content_id": content,
                "visitor_id": visitor,
                "platform": creator["platform"],
                "kind": rng.choice(VIEW_KINDS),
            },
        )
        if rng.random() >= creator["engagement"]:
            if rng.random() < cfg.view_through:
                order_ts = ts + _lognormal_ms(rng, 4 * HOUR_MS, 1.0, 60_000, 3 * DAY_MS)
                if order_ts < end_ms:
                    emit("orders", visitor, order_event(visitor, order_ts, None))
            continue
        click_ts = ts + _lognormal_ms(rng, 30_000, 1.0, 1_000, 10 * MINUTE_MS)
        if click_ts >= end_ms:
            continue
        ref = creator["slug"] if rng.random() < 0.7 else creator["code"]
        emit("clicks", visitor, click_event(visitor, click_ts, ref, creator))
        last_ts = click_ts
        if rng.random() < cfg.second_creator:
            other = rng.choices(creators, weights)[0]
            second_ts = click_ts + _lognormal_ms(rng, 6 * HOUR_MS, 1.5, 5_000, 20 * DAY_MS)
            if second_ts >= end_ms:
                continue
            last_ts = second_ts
            emit("clicks", visitor, click_event(visitor, last_ts, other["slug"], other))
        if rng.random() >= creator["conversion"] * 4:  # clicks convert over the whole run
            continue
        order_ts = last_ts + delay_to_order()
        if order_ts >= end_ms:
            continue
        code: str | None = None
        roll = rng.random()
        if roll < cfg.code_share:
            code = creator["code"] if rng.random() < 0.9 else creator["code"].lower()
        elif roll < cfg.code_share + 0.03:
            code = creator.get("expired_code") or creator.get("inactive_code")
        emit("orders", visitor, order_event(visitor, order_ts, code))
        referred_orders += 1

    # -- organic orders: visitors with no touch, some with a code from elsewhere ------
    for _ in range(int(referred_orders * cfg.organic_orders) + 1):
        visitor = next_id("vis")
        ts = rng.randint(cfg.start_ms, end_ms - 1)
        code = None
        if rng.random() < 0.25:
            code = rng.choices(creators, weights)[0]["code"]  # a code seen elsewhere
        emit("orders", visitor, order_event(visitor, ts, code))

    # -- referral chains: customers with their own code refer friends, who refer theirs --
    base_truth = expected_last_click(
        [ev for _, _, topic, _, ev in events if topic in ("views", "clicks", "orders")], [], codes
    )
    creator_class = {c["creator_id"]: c["chain_class"] for c in creators}
    pay_hash = {c["creator_id"]: c["payment_hash"] for c in creators}
    node_of: dict[str, tuple[str, int, str]] = {}  # customer -> (root, generation, parent)
    frontier: list[tuple[int, str]] = []
    for ts, _, topic, _, ev in sorted(events, key=lambda e: (e[0], e[1])):
        if topic != "orders" or ev["customer_id"] in node_of:
            continue
        won = base_truth.get(ev["order_id"])
        customer = ev["customer_id"]
        if won and won["referrer_id"] in creator_class:
            node_of[customer] = (won["referrer_id"], 1, won["referrer_id"])
            frontier.append((ts, customer))
        elif won is None and rng.random() < cfg.advocate_share:
            node_of[customer] = (customer, 0, "")  # an organic customer who starts a tree of their own
            frontier.append((ts, customer))
    chain_size: dict[str, int] = {}
    rings: list[str] = []
    ring_referrer: dict[str, tuple[str, str]] = {}  # ring order -> (direct referrer, its code)
    ring_share = 0.15 if "ring" in inject else cfg.ring_share
    frontier.sort()
    while frontier:
        t0, customer = frontier.pop(0)
        root, g, parent = node_of[customer]
        k = cfg.chain_k[creator_class.get(root, "sub")]
        if g >= cfg.max_generations or chain_size.get(root, 0) >= cfg.max_chain_nodes:
            continue
        children = _poisson(rng, k)
        if children == 0:
            continue
        code = f"C{hashlib.blake2b(customer.encode(), digest_size=4).hexdigest().upper()}"
        issued = t0 + _lognormal_ms(rng, HOUR_MS, 0.8, 5 * MINUTE_MS, 6 * HOUR_MS)
        if issued >= end_ms:
            continue
        rec = {
            "code": code,
            "referrer_id": customer,
            "referrer_type": "customer",
            "issued_ts": issued,
            "active": True,
            "discount_pct": 10,
        }
        codes[code.lower()] = rec
        ds.reference.append(Message("codes", code, orjson.dumps(rec), rec))
        for _ in range(children):
            friend = next_id("vis")
            click_ts = issued + _lognormal_ms(rng, 3 * HOUR_MS, 0.8, MINUTE_MS, DAY_MS)
            order_ts = click_ts + _lognormal_ms(rng, HOUR_MS, 0.8, MINUTE_MS, 12 * HOUR_MS)
            if order_ts >= end_ms:
                continue
            emit(
                "clicks",
                friend,
                {
                    "event_id": next_id("c"),
                    "ts": click_ts,
                    "visitor_id": friend,
                    "ref": code.lower(),
                    "utm_source": "friend",
                    "utm_medium": "referral",
                    "ip_hash": h(p, "ip", friend),
                    "user_agent": "Mozilla/5.0 (Android 15)",
                },
            )
            order = order_event(friend, order_ts, code if rng.random() < 0.5 else None)
            if parent and node_of.get(parent, ("", 0, "x"))[2] != "" and rng.random() < ring_share:
                # a referral ring: the friend pays with the card of the referrer's own referrer
                order["payment_hash"] = pay_hash.get(parent) or h(p, "pay", parent)
                rings.append(order["order_id"])
                ring_referrer[order["order_id"]] = (customer, code)
                emit("orders", friend, order)
                continue
            emit("orders", friend, order)
            node_of[order["customer_id"]] = (root, g + 1, customer)
            chain_size[root] = chain_size.get(root, 0) + 1
            frontier.append((order_ts, order["customer_id"]))
            frontier.sort()

    # -- refunds -------------------------------------------------------------------------
    for ts, _, topic, _, ev in list(events):
        if topic != "orders" or rng.random() >= cfg.refund_share:
            continue
        refund_ts = ts + rng.randint(DAY_MS // 4, 10 * DAY_MS)
        if refund_ts >= end_ms:
            continue
        full = rng.random() < 0.7
        amount = ev["amount_minor"] if full else ev["amount_minor"] // 2
        emit(
            "refunds",
            ev["order_id"],
            {
                "event_id": next_id("r"),
                "ts": refund_ts,
                "order_id": ev["order_id"],
                "amount_minor": amount,
                "reason": rng.choice(("damaged", "not as described", "changed mind")),
            },
        )

    # -- fraud, from its own random stream: the honest traffic above stays the same ------
    incidents: list[dict[str, Any]] = []
    injected: set[str] = set()
    if inject:
        env = _Env(
            cfg=cfg,
            fcfg=fcfg,
            rng=random.Random(f"inject-{cfg.prefix}"),
            start_ms=cfg.start_ms,
            end_ms=end_ms,
            creators=creators,
            codes=codes,
            events=[(topic, ev) for _, _, topic, _, ev in sorted(events, key=lambda e: (e[0], e[1]))],
            emit=emit,
            next_id=next_id,
            order_event=order_event,
            click_event=click_event,
            injected=injected,
            incidents=incidents,
        )
        for kind in inject:
            if kind == "ring":
                by_referrer: dict[str, list[str]] = {}
                for order_id in rings:
                    by_referrer.setdefault(ring_referrer[order_id][0], []).append(order_id)
                for referrer, ids in sorted(by_referrer.items()):
                    code = ring_referrer[ids[0]][1]
                    incidents.append(
                        {
                            "rule": "referral_ring",
                            "subject": referrer,
                            "referrer_id": referrer,
                            "code": code,
                            "events": ids,
                        }
                    )
            else:
                for n in range(cfg.inject_count):
                    _INJECTORS[kind](env, n)

    events.sort(key=lambda e: (e[0], e[1]))
    valid = [Message(topic, key, orjson.dumps(ev), ev) for _, _, topic, key, ev in events]

    # -- duplicates and malformed messages, spread through the stream -------------------
    out: list[Message] = []
    malformed: list[dict[str, Any]] = []
    far_future = int(time.time() * 1000) + 3 * DAY_MS
    irng = random.Random(f"inject-extra-{cfg.prefix}")
    for msg in valid:
        out.append(msg)
        r = irng if msg.event is not None and msg.event["event_id"] in injected else rng
        if r.random() < cfg.duplicate_share:
            out.append(msg)
        if r.random() < cfg.malformed_share:
            bad = _malformed(r, msg, far_future)
            out.append(bad)
            malformed.append({"topic": bad.topic, "key": bad.key})
    ds.events = out

    touch_events = [m.event for m in valid if m.event is not None and m.topic in ("views", "clicks", "orders")]
    orders = [m.event for m in valid if m.event is not None and m.topic == "orders"]
    excluded = expected_excluded_clicks(touch_events, codes, fcfg)
    last_click = expected_last_click(
        touch_events, [], codes, excluded=set(excluded), block_below_ms=fcfg.block_below_ms
    )
    profiles = {c["creator_id"]: c for c in creators}
    leaked, leaking = expected_leakage(touch_events, codes, set(excluded), fcfg, profiles)
    blocked = expected_blocked_orders(orders, last_click, profiles, set(rings), leaked)
    ds.truth = {
        "seed": cfg.seed,
        "start_ms": cfg.start_ms,
        "end_ms": end_ms,
        "counts": {
            t: len({_natural_key(m) for m in [*ds.reference, *valid] if m.topic == t})
            for t in ("views", "clicks", "orders", "refunds", "codes", "creators")
        },
        "malformed": len(malformed),
        "credits": expected_credits(touch_events, codes, excluded=set(excluded), block_below_ms=fcfg.block_below_ms),
        "rings": sorted(rings),
        "last_click": last_click,
        "excluded_clicks": excluded,
        "blocked_orders": blocked,
        "leaking_buckets": leaking,
        "inject": list(inject),
        "incidents": incidents,
    }
    ds.truth["chain_parents"], ds.truth["chains"] = expected_chains(
        orders,
        last_click,
        {o for o, rule in blocked.items() if rule in ("self_referral", "referral_ring")},
        {c["creator_id"]: c["chain_class"] for c in creators},
    )
    return ds


# -- fraud injection ------------------------------------------------------------------
@dataclass
class _Env:
    """What the injectors need from ``generate``: its id counter, event builders and output."""

    cfg: SimConfig
    fcfg: FraudConfig
    rng: random.Random
    start_ms: int
    end_ms: int
    creators: list[dict[str, Any]]
    codes: dict[str, dict[str, Any]]
    events: list[tuple[str, dict[str, Any]]]  # the honest events, in time order
    emit: Callable[[str, str, dict[str, Any]], None]
    next_id: Callable[[str], str]
    order_event: Callable[..., dict[str, Any]]
    click_event: Callable[..., dict[str, Any]]
    injected: set[str]
    incidents: list[dict[str, Any]]
    used: Counter[str] = field(default_factory=Counter)  # incidents per creator
    credited: Counter[str] = field(default_factory=Counter)  # injected orders credited to a creator
    refund_targets: set[str] = field(default_factory=set)
    honest: dict[str, list[int]] | None = None

    @property
    def span(self) -> int:
        return self.end_ms - self.start_ms

    def between(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, max(lo, hi))

    def clamp(self, ts: int) -> int:
        return max(self.start_ms, min(ts, self.end_ms - 1))

    def pick(self, pool: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A creator from ``pool`` (default: all), one picked least often so far."""
        pool = pool or self.creators
        fewest = min(self.used[c["creator_id"]] for c in pool)
        creator = self.rng.choice([c for c in pool if self.used[c["creator_id"]] == fewest])
        self.used[creator["creator_id"]] += 1
        return creator

    def add(self, topic: str, key: str, event: dict[str, Any]) -> str:
        self.injected.add(event["event_id"])
        self.emit(topic, key, event)
        return str(event["order_id"] if topic == "orders" else event["event_id"])

    def order(self, visitor: str, ts: int, code: str | None = None) -> dict[str, Any]:
        return self.order_event(visitor, ts, code, self.rng)

    def click(self, visitor: str, ts: int, creator: dict[str, Any], ip_hash: str = "", user_agent: str = "") -> str:
        ev = self.click_event(visitor, max(self.start_ms, ts), creator["slug"], creator, ip_hash, user_agent)
        return self.add("clicks", visitor, ev)

    def refund(self, order: dict[str, Any], ts: int) -> str:
        ev = {
            "event_id": self.next_id("r"),
            "ts": ts,
            "order_id": order["order_id"],
            "amount_minor": order["amount_minor"],
            "reason": "not as described",
        }
        return self.add("refunds", order["order_id"], ev)

    def incident(self, rule: str, subject: str, creator: dict[str, Any], code: str, ids: list[str]) -> None:
        self.incidents.append(
            {"rule": rule, "subject": subject, "referrer_id": creator["creator_id"], "code": code, "events": ids}
        )

    def honest_orders(self) -> dict[str, list[int]]:
        """Order times per creator of the honest orders credited to it (last click)."""
        if self.honest is None:
            touches = [ev for topic, ev in self.events if topic in ("views", "clicks", "orders")]
            won = expected_last_click(touches, [], self.codes)
            self.honest = {c["creator_id"]: [] for c in self.creators}
            for topic, ev in self.events:
                credit = won.get(ev["order_id"]) if topic == "orders" else None
                if credit and credit["referrer_id"] in self.honest:
                    self.honest[credit["referrer_id"]].append(ev["ts"])
        return self.honest


def _inject_self_referral(env: _Env, n: int) -> None:
    """The creator buys with its own code, email and card."""
    del n
    creator = env.pick()
    ids = []
    for k in range(3):
        visitor = env.next_id("vis")
        ts = env.start_ms + int(env.span * (k + env.rng.uniform(0.1, 0.9)) / 3)
        order = env.order(visitor, ts, creator["code"])
        order["email_hash"] = creator["email_hash"]
        order["payment_hash"] = creator["payment_hash"]
        ids.append(env.add("orders", visitor, order))
        env.credited[creator["creator_id"]] += 1
    env.incident("self_referral", creator["creator_id"], creator, creator["code"], ids)


def _inject_click_injection(env: _Env, n: int) -> None:
    """A click of the creator's link fired just before orders that would be organic."""
    del n
    creator = env.pick()
    ids = []
    for k in range(8):
        gap = env.rng.randint(1_000, 4_000) if k < 6 else env.rng.randint(10_000, 25_000)
        ts = env.between(env.start_ms + MINUTE_MS, env.end_ms - 1)
        visitor = env.next_id("vis")
        ids.append(env.click(visitor, ts - gap, creator))
        ids.append(env.add("orders", visitor, env.order(visitor, ts)))
        env.credited[creator["creator_id"]] += gap >= env.fcfg.block_below_ms
    env.incident("click_injection", creator["creator_id"], creator, creator["slug"], ids)


def _inject_click_flood(env: _Env, n: int) -> None:
    """40 clicks from one IP within 50 s; three of the 'visitors' order days later."""
    creator = env.pick()
    ip = h(env.cfg.prefix, "flood-ip", n)
    t0 = env.between(env.start_ms, env.end_ms - 3 * DAY_MS - MINUTE_MS)
    times = sorted(t0 + env.rng.randint(0, 50_000) for _ in range(40))
    buyers = set(env.rng.sample(range(40), 3))
    ids = []
    for k, ts in enumerate(times):
        visitor = env.next_id("vis")
        ids.append(env.click(visitor, ts, creator, ip, env.rng.choice(BROWSER_AGENTS)))
        if k in buyers:
            order_ts = env.clamp(ts + env.rng.randint(DAY_MS, 3 * DAY_MS))
            ids.append(env.add("orders", visitor, env.order(visitor, order_ts)))
    env.incident("click_flood", f"{ip}|{creator['creator_id']}", creator, creator["slug"], ids)


def _inject_bot(env: _Env, n: int) -> None:
    """15 crawler clicks over the run; two of the crawled 'visitors' order a day later."""
    del n
    creator = env.pick()
    times = [env.start_ms + int(env.span * (k + env.rng.random()) / 15) for k in range(15)]
    late = [k for k, ts in enumerate(times) if ts + DAY_MS + 2 * HOUR_MS < env.end_ms]
    buyers = set(env.rng.sample(late, min(2, len(late))))
    ids = []
    for k, ts in enumerate(times):
        visitor = env.next_id("vis")
        ids.append(env.click(visitor, ts, creator, user_agent=env.rng.choice(BOT_AGENTS)))
        if k in buyers:
            order_ts = ts + DAY_MS + env.rng.randint(0, 2 * HOUR_MS)
            ids.append(env.add("orders", visitor, env.order(visitor, order_ts)))
    env.incident("bot_click", creator["creator_id"], creator, creator["slug"], ids)


def _inject_leakage(env: _Env, n: int) -> None:
    """40–60 redemptions of one code in one 6-hour bucket, no click or view, many from coupon sites."""
    del n
    count = env.rng.randint(40, 60)
    # the creator's audience cannot explain that many: the rule fires whatever the code's history
    small = [c for c in env.creators if c["followers"] * env.fcfg.leak_per_follower < count]
    creator = env.pick(small)
    window = env.fcfg.leak_window_ms
    first = -(-(env.start_ms + env.span // 2) // window)
    last = env.end_ms // window - 1
    bucket = env.rng.randint(first, last) if last >= first else (env.end_ms - 1) // window
    spread = min(4 * HOUR_MS, window)
    base = bucket * window + env.between(0, window - spread)
    domains = sorted(env.fcfg.coupon_domains)
    coupon = set(env.rng.sample(range(count), round(0.6 * count))) if domains else set()
    ids = []
    for k in range(count):
        visitor = env.next_id("vis")
        ts = max(bucket * window, env.clamp(base + env.rng.randint(0, spread - 1)))
        order = env.order(visitor, ts, creator["code"])
        if k in coupon:
            order["referrer_domain"] = env.rng.choice(domains)
        ids.append(env.add("orders", visitor, order))
    env.credited[creator["creator_id"]] += count
    env.incident("code_leakage", creator["code"].lower(), creator, creator["code"], ids)


def _inject_refund_abuse(env: _Env, n: int) -> None:
    """Orders through the link of a small creator, most refunded within days."""
    del n
    honest = env.honest_orders()

    def orders_of(c: dict[str, Any]) -> int:
        return len(honest[c["creator_id"]]) + env.credited[c["creator_id"]]

    ranked = sorted(env.creators, key=lambda c: (env.used[c["creator_id"]], orders_of(c), c["creator_id"]))
    creator = env.pick(ranked[:3])
    env.refund_targets.add(creator["creator_id"])
    have = orders_of(creator)
    count = max(10, env.fcfg.refund_min_orders)
    while 5 * ((3 * count + 3) // 4) < 3 * (have + count):  # ≥ 60 % of all its orders refunded
        count += 1
    refunded = set(env.rng.sample(range(count), (3 * count + 3) // 4))
    t0 = env.between(env.start_ms + 3 * HOUR_MS, env.end_ms - 8 * DAY_MS)
    ids = []
    for k in range(count):
        visitor = env.next_id("vis")
        ts = min(t0 + env.rng.randint(0, 5 * DAY_MS), env.end_ms - 2 * MINUTE_MS)
        ids.append(env.click(visitor, ts - env.rng.randint(5 * MINUTE_MS, 2 * HOUR_MS), creator))
        order = env.order(visitor, ts)
        ids.append(env.add("orders", visitor, order))
        if k in refunded:
            ids.append(env.refund(order, min(ts + env.rng.randint(DAY_MS, 3 * DAY_MS), env.end_ms - 1)))
    env.incident("refund_rate", creator["creator_id"], creator, creator["slug"], ids)


def _inject_spike(env: _Env, n: int) -> None:
    """30 orders through the creator's link within one hour, against its earlier orders."""
    del n
    hour = (env.start_ms + int(env.span * env.rng.uniform(0.5, 0.85))) // HOUR_MS * HOUR_MS
    hour = max(env.start_ms + 4 * HOUR_MS, min(hour, env.end_ms - HOUR_MS))
    honest = env.honest_orders()
    earlier = [c for c in env.creators if any(ts <= hour - 3 * HOUR_MS for ts in honest[c["creator_id"]])]
    # not a refund-abuse target: thirty more orders would dilute its refund rate
    creator = env.pick([c for c in earlier if c["creator_id"] not in env.refund_targets] or earlier)
    if not any(ts <= hour - 3 * HOUR_MS for ts in honest[creator["creator_id"]]):
        for k in range(3):  # a few ordinary orders days before, so there is a baseline
            visitor = env.next_id("vis")
            ts = max(env.start_ms + 3 * HOUR_MS, hour - (k + 1) * DAY_MS - env.rng.randint(0, 6 * HOUR_MS))
            env.click(visitor, ts - env.rng.randint(5 * MINUTE_MS, 2 * HOUR_MS), creator)
            env.add("orders", visitor, env.order(visitor, ts))
    ids = []
    for _ in range(30):
        visitor = env.next_id("vis")
        ts = env.clamp(hour + env.rng.randint(0, HOUR_MS - 1))
        ids.append(env.click(visitor, ts - env.rng.randint(2 * MINUTE_MS, 10 * MINUTE_MS), creator))
        ids.append(env.add("orders", visitor, env.order(visitor, ts)))
    env.incident("conversion_spike", creator["creator_id"], creator, creator["slug"], ids)


_INJECTORS: dict[str, Callable[[_Env, int], None]] = {
    "self_referral": _inject_self_referral,
    "click_injection": _inject_click_injection,
    "click_flood": _inject_click_flood,
    "bot": _inject_bot,
    "leakage": _inject_leakage,
    "refund_abuse": _inject_refund_abuse,
    "spike": _inject_spike,
}


# -- fraud truth (SPEC §5), plainly over all events ---------------------------------------
def _resolve(codes: dict[str, dict[str, Any]], ref: str | None, at: int) -> dict[str, Any] | None:
    """The code record ``ref`` names when it is active and not expired at ``at``."""
    rec = codes.get((ref or "").lower())
    if not rec or rec.get("active") is False:
        return None
    if rec.get("expires_ts") is not None and at >= rec["expires_ts"]:
        return None
    return rec


def expected_excluded_clicks(
    events: list[dict[str, Any]], codes: dict[str, dict[str, Any]], fcfg: FraudConfig
) -> dict[str, str]:
    """Clicks that are no touch at all: ``bot_click`` (user agent) or ``click_flood``.

    Flood: the non-bot clicks with an ip_hash and a valid ref, grouped by (ip_hash,
    referrer); for each click d, the clicks of its group in (d.ts - window, d.ts] are all
    flooded when there are more than ``flood_max_clicks`` of them.
    """
    out: dict[str, str] = {}
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for ev in events:
        if "ref" not in ev:
            continue
        if fraud.is_bot(ev.get("user_agent"), fcfg):
            out[ev["event_id"]] = "bot_click"
            continue
        rec = _resolve(codes, ev["ref"], ev["ts"])
        if rec is not None and ev.get("ip_hash"):
            groups.setdefault((ev["ip_hash"], rec["referrer_id"]), {})[ev["event_id"]] = ev["ts"]
    for group in groups.values():
        clicks = sorted((ts, event_id) for event_id, ts in group.items())
        for ts, _ in clicks:
            window = [e for t, e in clicks if ts - fcfg.flood_window_ms < t <= ts]
            if len(window) > fcfg.flood_max_clicks:
                for event_id in window:
                    out[event_id] = "click_flood"
    return out


def expected_leakage(
    events: list[dict[str, Any]],
    codes: dict[str, dict[str, Any]],
    excluded: set[str],
    fcfg: FraudConfig,
    creators: dict[str, dict[str, Any]],
    click_window_ms: int = 30 * DAY_MS,
    view_window_ms: int = DAY_MS,
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Untouched redemptions that code leakage blocks (order -> code referrer), and the leaking buckets.

    A redemption is an order with a valid code; it is touched when its visitor clicked a
    link of the code's referrer (an eligible click) or viewed that creator within the
    windows. Per code and ``leak_window_ms`` bucket (aligned to the epoch), a bucket leaks
    with at least ``leak_min_redemptions`` redemptions and an untouched share above
    max(min_share, median + k·MAD of the code's earlier buckets) or more redemptions than
    ``leak_per_follower`` × the creator's followers. Blocked: the untouched redemptions
    of leaking buckets and every untouched redemption from a coupon site.
    """
    by_visitor: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        if "visitor_id" in ev:
            by_visitor.setdefault(ev["visitor_id"], []).append(ev)
    orders = {ev["order_id"]: ev for ev in events if "order_id" in ev}
    # code -> bucket -> [(order_id, touched, coupon site)]
    buckets: dict[str, dict[int, list[tuple[str, bool, bool]]]] = {}
    referrer_of: dict[str, str] = {}
    for order in sorted(orders.values(), key=lambda o: (o["ts"], o["order_id"])):
        ots = order["ts"]
        rec = _resolve(codes, order.get("discount_code"), ots)
        if rec is None:
            continue
        referrer = str(rec["referrer_id"])
        touched = False
        for e in by_visitor.get(order["visitor_id"], []):
            if e["ts"] > ots:
                continue
            if "ref" in e and e["event_id"] not in excluded:
                if fcfg.block_below_ms <= ots - e["ts"] <= click_window_ms:
                    won = _resolve(codes, e["ref"], e["ts"])
                    touched = touched or (won is not None and won["referrer_id"] == referrer)
            elif "content_id" in e and e.get("creator_id") == referrer and ots - e["ts"] <= view_window_ms:
                touched = True
        code = str(rec["code"]).lower()
        referrer_of[code] = referrer
        coupon = fraud.coupon_site(order.get("referrer_domain"), fcfg)
        buckets.setdefault(code, {}).setdefault(ots // fcfg.leak_window_ms, []).append(
            (order["order_id"], touched, coupon)
        )
    blocked: dict[str, str] = {}
    leaking: list[dict[str, Any]] = []
    for code, per_bucket in sorted(buckets.items()):
        referrer = referrer_of[code]
        followers = creators.get(referrer, {}).get("followers")
        history: list[float] = []
        for bucket, reds in sorted(per_bucket.items()):
            n = len(reds)
            untouched = sum(1 for _, t, _ in reds if not t)
            share = untouched / n
            recent = history[-28:]
            baseline = 0.0
            if len(recent) >= 3:
                mid = median(recent)
                baseline = mid + fcfg.leak_mad_factor * median(abs(x - mid) for x in recent)
            too_many = followers is not None and n > fcfg.leak_per_follower * followers
            leaks = n >= fcfg.leak_min_redemptions and (share > max(fcfg.leak_min_share, baseline) or too_many)
            if leaks:
                leaking.append({"code": code, "bucket": bucket, "redemptions": n, "untouched": untouched})
            for order_id, touched, coupon in reds:
                if not touched and (leaks or coupon):
                    blocked[order_id] = referrer
            history.append(share)
    return blocked, leaking


def expected_blocked_orders(
    orders: list[dict[str, Any]],
    last_click: dict[str, dict[str, Any] | None],
    creators: dict[str, dict[str, Any]],
    rings: set[str],
    leaked: dict[str, str],
) -> dict[str, str]:
    """Orders whose commission is blocked, with the rule: self_referral, referral_ring, code_leakage."""
    out: dict[str, str] = {}
    for order in orders:
        order_id = order["order_id"]
        won = last_click.get(order_id)
        referrer = won["referrer_id"] if won else None
        creator = creators.get(referrer or "")
        if creator and (
            (order.get("email_hash") and order.get("email_hash") == creator.get("email_hash"))
            or (order.get("payment_hash") and order.get("payment_hash") == creator.get("payment_hash"))
            or (order.get("device_id") and order.get("device_id") in creator.get("device_ids", []))
        ):
            out[order_id] = "self_referral"
        elif order_id in rings:
            out[order_id] = "referral_ring"
        elif order_id in leaked and referrer == leaked[order_id]:
            out[order_id] = "code_leakage"
    return out


def expected_chains(
    orders: list[dict[str, Any]], last_click: dict[str, Any], rings: set[str], classes: dict[str, str]
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Parents and per-root chain facts from the final credits (SPEC §4), by brute force.

    A customer's parent is the referrer of its earliest credited order (a referral ring
    earns no place); roots are referrers without a parent.
    """
    parents: dict[str, str] = {}
    for o in sorted(orders, key=lambda o: (o["ts"], o["order_id"])):
        won = last_click.get(o["order_id"])
        if won and o["order_id"] not in rings and o["customer_id"] not in parents:
            parents[o["customer_id"]] = won["referrer_id"]
    referrers = {v["referrer_id"] for v in last_click.values() if v}
    # a customer credited for a referral before its own first credited order starts its own tree
    for customer in list(parents):
        if customer in referrers:
            first_referral = min(
                o["ts"] for o in orders if (last_click.get(o["order_id"]) or {}).get("referrer_id") == customer
            )
            own = min(
                o["ts"]
                for o in orders
                if o["customer_id"] == customer and o["order_id"] not in rings and last_click.get(o["order_id"])
            )
            if first_referral < own:
                del parents[customer]

    def root_of(node: str) -> str:
        while node in parents:
            node = parents[node]
        return node

    trees: dict[str, list[str]] = {}
    for node in referrers | set(parents):
        trees.setdefault(root_of(node), []).append(node)
    chains: dict[str, dict[str, Any]] = {}
    for root, members in trees.items():
        depth_of = {m: 0 for m in members}
        for m in members:
            d, x = 0, m
            while x in parents:
                d, x = d + 1, parents[x]
            depth_of[m] = d
        per_gen = [0] * (max(depth_of.values()) + 1)
        for d in depth_of.values():
            per_gen[d] += 1
        ks = [(per_gen[g + 1] if g + 1 < len(per_gen) else 0) / per_gen[g] for g in range(len(per_gen))]
        n = len(members)
        neighbours: dict[str, list[str]] = {m: [] for m in members}
        for m in members:
            if m in parents:
                neighbours[m].append(parents[m])
                neighbours[parents[m]].append(m)
        total = 0
        for start in members:
            seen, todo = {start: 0}, [start]
            while todo:
                x = todo.pop()
                for y in neighbours[x]:
                    if y not in seen:
                        seen[y] = seen[x] + 1
                        todo.append(y)
            total += sum(seen.values())
        virality = total / (n * (n - 1)) if n > 1 else 0.0
        by_k = any(ks[g] >= 1 and ks[g + 1] >= 1 for g in range(1, len(ks) - 1))
        viral = len(per_gen) - 1 >= 3 and (by_k or (n >= 50 and virality >= 4))
        chains[root] = {
            "nodes": n,
            "depth": len(per_gen) - 1,
            "nodes_by_generation": per_gen,
            "structural_virality": virality,
            "viral": viral,
            "class": classes.get(root, "customer"),
        }
    return parents, chains


def _natural_key(m: Message) -> str:
    e = m.event or {}
    if m.topic == "codes":
        return str(e["code"]).lower()
    if m.topic == "creators":
        return str(e["creator_id"])
    if m.topic == "orders":
        return str(e["order_id"])
    return str(e["event_id"])


def _malformed(rng: random.Random, msg: Message, far_future: int) -> Message:
    kind = rng.randrange(5)
    ev = dict(msg.event or {})
    ev["event_id"] = f"bad-{ev.get('event_id', rng.random())}"
    if kind == 0:
        return Message(msg.topic, msg.key, msg.value[: max(1, len(msg.value) // 2)], None)
    if kind == 1:
        return Message(msg.topic, msg.key, b"\xff\xfenot json at all", None)
    if kind == 2:
        ev.pop("ts", None)
    elif kind == 3:
        ev["ts"] = far_future
    elif "amount_minor" in ev:
        ev["amount_minor"] = -abs(ev["amount_minor"]) - 1
    else:
        ev["ts"] = "yesterday"
    return Message(msg.topic, msg.key, orjson.dumps(ev), None)


def expected_last_click(
    events: list[dict[str, Any]],
    topics: list[str],
    codes: dict[str, dict[str, Any]],
    click_window_ms: int = 30 * DAY_MS,
    view_window_ms: int = DAY_MS,
    excluded: set[str] | frozenset[str] = frozenset(),
    block_below_ms: int = 0,
) -> dict[str, dict[str, Any] | None]:
    """SPEC §3 last-click with the code-wins policy, written plainly over all events.

    An order goes to the owner of its discount code when the code is active and not
    expired at order time; otherwise to the owner of the last click (ref active at click
    time) within the click window; otherwise to the creator of the last view with the
    visitor's id within the view window; otherwise to nobody. Clicks in ``excluded`` (bots,
    floods) are no touch at all, and a click less than ``block_below_ms`` before an order is
    no touch for that order (click injection, SPEC §5).
    """
    del topics

    def owner(ref: str | None, at: int) -> dict[str, Any] | None:
        if not ref:
            return None
        rec = codes.get(ref.lower())
        if not rec or rec.get("active") is False:
            return None
        if rec.get("expires_ts") is not None and at >= rec["expires_ts"]:
            return None
        return rec

    by_visitor: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        if "visitor_id" in ev:
            by_visitor.setdefault(ev["visitor_id"], []).append(ev)
    truth: dict[str, dict[str, Any] | None] = {}
    for evs in by_visitor.values():
        for order in (e for e in evs if "order_id" in e):
            if order["order_id"] in truth:
                continue
            ots = order["ts"]
            rec = owner(order.get("discount_code"), ots)
            if rec:
                truth[order["order_id"]] = {"referrer_id": rec["referrer_id"], "touch_type": "code"}
                continue
            best: tuple[int, str, dict[str, Any]] | None = None
            for e in evs:
                if (
                    "ref" in e
                    and e["ts"] <= ots
                    and block_below_ms <= ots - e["ts"] <= click_window_ms
                    and e["event_id"] not in excluded
                ):
                    r = owner(e["ref"], e["ts"])
                    if r and (best is None or (e["ts"], e["event_id"]) > (best[0], best[1])):
                        best = (e["ts"], e["event_id"], r)
            if best:
                truth[order["order_id"]] = {"referrer_id": best[2]["referrer_id"], "touch_type": "click"}
                continue
            last_view: dict[str, Any] | None = None
            for e in evs:
                if "content_id" in e and e["ts"] <= ots and ots - e["ts"] <= view_window_ms:
                    if last_view is None or (e["ts"], e["event_id"]) > (last_view["ts"], last_view["event_id"]):
                        last_view = e
            truth[order["order_id"]] = (
                {"referrer_id": last_view["creator_id"], "touch_type": "view"} if last_view else None
            )
    return truth


def expected_credits(
    events: list[dict[str, Any]],
    codes: dict[str, dict[str, Any]],
    click_window_ms: int = 30 * DAY_MS,
    view_window_ms: int = DAY_MS,
    half_life_ms: int = 7 * DAY_MS,
    excluded: set[str] | frozenset[str] = frozenset(),
    block_below_ms: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """Credits per order, model and referrer under the code-wins policy (SPEC §3.3).

    A valid code takes everything; otherwise the clicks in the window share the order,
    otherwise the views: last click 1 on the newest, first click 1 on the oldest, linear
    1/n each, time decay 2^(-age / 7 days) normalised, position based 40 % to each end and
    20 % over the middle (50/50 for two). Credits of one referrer add up. Clicks in
    ``excluded`` and clicks less than ``block_below_ms`` before the order are no touch.
    """

    def owner(ref: str | None, at: int) -> str | None:
        rec = codes.get((ref or "").lower())
        if not rec or rec.get("active") is False:
            return None
        if rec.get("expires_ts") is not None and at >= rec["expires_ts"]:
            return None
        return str(rec["referrer_id"])

    def spread(touches: list[tuple[int, str]], order_ts: int) -> dict[str, dict[str, float]]:
        n = len(touches)
        shares: dict[str, list[float]] = {
            "last_click": [0.0] * (n - 1) + [1.0],
            "first_click": [1.0] + [0.0] * (n - 1),
            "linear": [1 / n] * n,
        }
        decay = [0.5 ** ((order_ts - ts) / half_life_ms) for ts, _ in touches]
        shares["time_decay"] = [d / sum(decay) for d in decay]
        if n <= 2:
            shares["position_based"] = [1 / n] * n
        else:
            shares["position_based"] = [0.4] + [0.2 / (n - 2)] * (n - 2) + [0.4]
        out: dict[str, dict[str, float]] = {}
        for model, ws in shares.items():
            credit: dict[str, float] = {}
            for (_, referrer), w in zip(touches, ws, strict=True):
                if w > 0:
                    credit[referrer] = credit.get(referrer, 0.0) + w
            out[model] = credit
        return out

    by_visitor: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        if "visitor_id" in ev:
            by_visitor.setdefault(ev["visitor_id"], []).append(ev)
    truth: dict[str, dict[str, dict[str, float]]] = {}
    for evs in by_visitor.values():
        evs = sorted({e["event_id"]: e for e in evs}.values(), key=lambda e: (e["ts"], e["event_id"]))
        for order in (e for e in evs if "order_id" in e):
            ots = order["ts"]
            code_owner = owner(order.get("discount_code"), ots)
            if code_owner:
                truth[order["order_id"]] = spread([(ots, code_owner)], ots)
                continue
            clicks = [
                (e["ts"], r)
                for e in evs
                if "ref" in e
                and e["ts"] <= ots
                and block_below_ms <= ots - e["ts"] <= click_window_ms
                and e["event_id"] not in excluded
                and (r := owner(e["ref"], e["ts"])) is not None
            ]
            views = [
                (e["ts"], str(e["creator_id"]))
                for e in evs
                if "content_id" in e and e["ts"] <= ots and ots - e["ts"] <= view_window_ms
            ]
            touches = clicks or views
            truth[order["order_id"]] = spread(touches, ots) if touches else {}
    return truth


# -- output ---------------------------------------------------------------------------
def write_out(ds: Dataset, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "events.jsonl").open("wb") as fh:
        for m in [*ds.reference, *ds.events]:
            fh.write(
                orjson.dumps(
                    {
                        "topic": m.topic,
                        "key": m.key,
                        "value": m.value.decode(errors="replace"),
                        "valid": m.event is not None,
                    }
                )
            )
            fh.write(b"\n")
    (out / "ground_truth.json").write_bytes(orjson.dumps(ds.truth, option=orjson.OPT_INDENT_2))


#: the simulator's producer tuning, on top of :func:`streams.kafka.producer_config`
PRODUCER_TUNING = {"linger.ms": 20, "batch.size": 1_000_000}


def batched(messages: Iterator[Message] | list[Message], partitions: dict[str, int], size: int) -> Iterator[Message]:
    """Group events as a collector does (SPEC §2): one JSON array per topic partition, at
    most ``size`` events, in their order. Reference topics and malformed messages go alone."""
    arrays: Arrays[Message] = Arrays(max_items=size)

    def flush(key: tuple[str, int]) -> Iterator[Message]:
        for group in arrays.pop(key):
            if len(group) == 1:
                yield group[0]
            else:
                events = [m.event for m in group]
                yield Message(key[0], group[0].key, orjson.dumps(events), {"batch": events})

    for m in messages:
        count = partitions.get(m.topic)
        if count is None or m.topic in ("codes", "creators"):
            yield m
            continue
        key = (m.topic, murmur2_partition(m.key.encode(), count))
        if m.event is None:
            yield from flush(key)
            yield m
            continue
        if arrays.add(key, m):
            yield from flush(key)
    for key in list(arrays.groups):
        yield from flush(key)


def produce(
    messages: Iterator[Message] | list[Message],
    bootstrap: str,
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
    batch: int = 1,
    security: KafkaSecurity = PLAINTEXT,
) -> int:
    """Send messages in order; ``rate`` > 0 paces them (messages per second). ``batch`` > 1
    sends events as JSON arrays of up to that many per topic partition, as a collector does."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(bootstrap, security, PRODUCER_TUNING))
    if batch > 1:
        meta = producer.list_topics(timeout=10)
        counts = {name: len(t.partitions) for name, t in meta.topics.items() if t.partitions}
        messages = batched(messages, counts, batch)
    sent = 0
    started = time.monotonic()
    for m in messages:
        if stop is not None and stop():
            break
        while True:
            try:
                producer.produce(m.topic, key=m.key.encode(), value=m.value)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
            if progress:
                progress(sent)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    remaining = producer.flush(30)
    if remaining:
        from ripple.broker import BrokerError

        raise BrokerError(f"{remaining} messages were not delivered to {bootstrap}")
    return sent


def interleave(streams: list[list[Message]]) -> list[Message]:
    """Several programs' events as one storefront sends them: merged in event time.

    Programs that share a stack run at the same time; sent one after the other, every
    program after the first would arrive days behind the stream time of the one before
    (late, SPEC §3.5). A message without a valid event (malformed) keeps its place after
    the event before it."""

    def keyed(n: int, stream: list[Message]) -> Iterator[tuple[int, int, int, Message]]:
        ts = -1
        for i, m in enumerate(stream):
            if isinstance(m.event, dict) and isinstance(m.event.get("ts"), int):
                ts = m.event["ts"]
            yield ts, n, i, m

    return [m for *_, m in heapq.merge(*(keyed(n, s) for n, s in enumerate(streams)))]


def demo_stream(cfg: SimConfig, stop: Callable[[], bool]) -> Iterator[list[Message]]:
    """Endless demo traffic, one simulated window after another with fresh ids.

    Windows follow each other from ``cfg.start_ms``, always forward in time: the windows in
    the past are sent as fast as the producer goes (a backlog), and once a window reaches
    the present its events are released as their time comes, as a storefront sends them.
    No event is ever in the future, and none goes back behind stream time (SPEC §3.5)."""
    n = 0
    span = int(cfg.days * DAY_MS)
    while not stop():
        window = SimConfig(
            **{
                **cfg.__dict__,
                "seed": cfg.seed + n,
                "run_id": f"{cfg.prefix}-{n}",
                "creator_prefix": cfg.creator_prefix or cfg.prefix,
                "start_ms": cfg.start_ms + n * span,
            }
        )
        ds = generate(window)
        if window.start_ms + span <= time.time() * 1000:
            yield [*ds.reference, *ds.events]
        else:
            yield ds.reference
            yield from _in_real_time(ds.events, stop)
        n += 1


def _in_real_time(events: list[Message], stop: Callable[[], bool]) -> Iterator[list[Message]]:
    """``events`` (in time order) in groups, each once the wall clock has reached its time."""
    pending: list[Message] = []
    for m in events:
        ts = m.event.get("ts") if isinstance(m.event, dict) else None
        while isinstance(ts, int) and ts > time.time() * 1000:
            if stop():
                return
            if pending:
                yield pending
                pending = []
            time.sleep(min(1.0, (ts - time.time() * 1000) / 1000))
        pending.append(m)
    if pending:
        yield pending
