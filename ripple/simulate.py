"""Synthetic storefront traffic with ground truth.

Creators with power-law follower counts post content; their audience views it, some
click a referral link or use the creator's discount code, some order — at the per-tier
rates publishers report (micro: 6–12 % engagement, 2–8 % conversion; macro: 1–3 %,
0.5–2 %). Orders arrive seconds to weeks after the click. Some customers become
advocates with their own codes and refer friends. A small share of messages is
malformed, and a few events are sent twice.

Everything is drawn from one ``random.Random(seed)``: the same seed and start give the
same events. The ground truth (expected last-click referrer per order) is computed here
from the generated events by a separate, straightforward implementation of SPEC §3, not
by the engine.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ripple.config import DAY_MS

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
    ring_share: float = 0.03  # share of friend orders paid with an ancestor's card
    refund_share: float = 0.08
    malformed_share: float = 0.01
    duplicate_share: float = 0.01
    run_id: str = ""
    creator_prefix: str = ""  # keeps the same creators across demo windows

    @property
    def prefix(self) -> str:
        return self.run_id or f"s{self.seed}"


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
                "code": f"{handle.upper()}20",
                "slug": handle,
                "weight": followers**0.6,
                "chain_class": "super" if i % cfg.super_every == 1 else "near" if i % cfg.near_every == 6 else "sub",
            }
        )
        ds.reference.append(Message("creators", creator_id, orjson.dumps(profile), profile))
        issued = cfg.start_ms - 30 * DAY_MS
        for name, pct in ((f"{handle.upper()}20", 20), (handle, None)):
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
            old = f"{handle.upper()}10"
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
            off = f"{handle.upper()}OFF"
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

    def order_event(visitor: str, ts: int, code: str | None) -> dict[str, Any]:
        customer = customers.setdefault(visitor, next_id("cus"))
        n_prev = orders_by_visitor.get(visitor, 0)
        orders_by_visitor[visitor] = n_prev + 1
        gross = rng.choice((1999, 2499, 3499, 4999, 5999, 7999, 12999))
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
            "items": [{"sku": f"SKU-{rng.randint(1, 40)}", "qty": 1, "price_minor": gross}],
        }
        if code:
            ev["discount_code"] = code
            ev["discount_minor"] = discount
        return ev

    def click_event(visitor: str, ts: int, ref: str, creator: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": next_id("c"),
            "ts": ts,
            "visitor_id": visitor,
            "ref": ref,
            "utm_source": creator["platform"],
            "utm_medium": "social",
            "utm_campaign": "spring",
            "ip_hash": h(p, "ip", visitor),
            "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X)",
            "referrer_domain": f"{creator['platform']}.com",
        }

    def delay_to_order() -> int:
        # seconds to weeks; a few beyond the 30-day click window
        return _lognormal_ms(rng, 3 * HOUR_MS, 2.2, 20_000, 45 * DAY_MS)

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
            order_ts = click_ts + _lognormal_ms(rng, HOUR_MS, 0.8, 30_000, 12 * HOUR_MS)
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
            if parent and node_of.get(parent, ("", 0, "x"))[2] != "" and rng.random() < cfg.ring_share:
                # a referral ring: the friend pays with the card of the referrer's own referrer
                order["payment_hash"] = pay_hash.get(parent) or h(p, "pay", parent)
                rings.append(order["order_id"])
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

    events.sort(key=lambda e: (e[0], e[1]))
    valid = [Message(topic, key, orjson.dumps(ev), ev) for _, _, topic, key, ev in events]

    # -- duplicates and malformed messages, spread through the stream -------------------
    out: list[Message] = []
    malformed: list[dict[str, Any]] = []
    far_future = int(time.time() * 1000) + 3 * DAY_MS
    for msg in valid:
        out.append(msg)
        if rng.random() < cfg.duplicate_share:
            out.append(msg)
        if rng.random() < cfg.malformed_share:
            bad = _malformed(rng, msg, far_future)
            out.append(bad)
            malformed.append({"topic": bad.topic, "key": bad.key})
    ds.events = out

    ds.truth = {
        "seed": cfg.seed,
        "start_ms": cfg.start_ms,
        "end_ms": end_ms,
        "counts": {
            t: len({_natural_key(m) for m in [*ds.reference, *valid] if m.topic == t})
            for t in ("views", "clicks", "orders", "refunds", "codes", "creators")
        },
        "malformed": len(malformed),
        "credits": expected_credits(
            [m.event for m in valid if m.event is not None and m.topic in ("views", "clicks", "orders")], codes
        ),
        "rings": sorted(rings),
        "last_click": expected_last_click(
            [m.event for m in valid if m.event is not None and m.topic in ("views", "clicks", "orders")],
            [t for t in (m.topic for m in valid)],
            {c: r for c, r in codes.items()},
        ),
    }
    ds.truth["chain_parents"], ds.truth["chains"] = expected_chains(
        [m.event for m in valid if m.event is not None and m.topic == "orders"],
        ds.truth["last_click"],
        set(rings),
        {c["creator_id"]: c["chain_class"] for c in creators},
    )
    return ds


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
) -> dict[str, dict[str, Any] | None]:
    """SPEC §3 last-click with the code-wins policy, written plainly over all events.

    An order goes to the owner of its discount code when the code is active and not
    expired at order time; otherwise to the owner of the last click (ref active at click
    time) within the click window; otherwise to the creator of the last view with the
    visitor's id within the view window; otherwise to nobody.
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
                if "ref" in e and e["ts"] <= ots and ots - e["ts"] <= click_window_ms:
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
) -> dict[str, dict[str, dict[str, float]]]:
    """Credits per order, model and referrer under the code-wins policy (SPEC §3.3).

    A valid code takes everything; otherwise the clicks in the window share the order,
    otherwise the views: last click 1 on the newest, first click 1 on the oldest, linear
    1/n each, time decay 2^(-age / 7 days) normalised, position based 40 % to each end and
    20 % over the middle (50/50 for two). Credits of one referrer add up.
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
                and ots - e["ts"] <= click_window_ms
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


def producer_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",  # same placement as Faust/aiokafka/Java clients
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "compression.type": "lz4",
        "batch.size": 1_000_000,
    }


def produce(
    messages: Iterator[Message] | list[Message],
    bootstrap: str,
    rate: float = 0.0,
    progress: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Send messages in order; ``rate`` > 0 paces them (messages per second)."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(bootstrap))
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
        raise RuntimeError(f"{remaining} messages were not delivered to {bootstrap}")
    return sent


def demo_stream(cfg: SimConfig, stop: Callable[[], bool]) -> Iterator[list[Message]]:
    """Endless demo traffic, one simulated window after another with fresh ids.

    Windows follow each other from ``cfg.start_ms``; once they reach the present they
    keep covering the last window before now, so no event is ever in the future.
    """
    n = 0
    span = int(cfg.days * DAY_MS)
    while not stop():
        now_ms = int(time.time() * 1000)
        start = min(cfg.start_ms + n * span, now_ms - span)
        window = SimConfig(
            **{
                **cfg.__dict__,
                "seed": cfg.seed + n,
                "run_id": f"{cfg.prefix}-{n}",
                "creator_prefix": cfg.creator_prefix or cfg.prefix,
                "start_ms": start,
            }
        )
        ds = generate(window)
        yield [*ds.reference, *ds.events]
        n += 1
