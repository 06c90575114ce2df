"""The synthetic program: creators, content, audience, orders, chains and injected fraud,
drawn from a seed (:func:`generate`)."""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ripple.config import DAY_MS
from ripple.simulator.model import (
    BOT_AGENTS,
    BROWSER_AGENTS,
    HOUR_MS,
    MINUTE_MS,
    NAMES,
    NICHES,
    PLATFORMS,
    TIER_PLANS,
    TIER_RATES,
    VIEW_KINDS,
    Dataset,
    Message,
    SimConfig,
    h,
    parse_inject,
    tier_of,
)
from ripple.simulator.truth import (
    expected_blocked_orders,
    expected_chains,
    expected_credits,
    expected_excluded_clicks,
    expected_last_click,
    expected_leakage,
)
from streams import fraud
from streams.fraud import FraudConfig


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
