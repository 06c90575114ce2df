"""The ground truth, computed from the generated events by a separate, straightforward
implementation of SPEC §3 and §5, not by the engine."""

from __future__ import annotations

from statistics import median
from typing import Any

from ripple.config import DAY_MS
from streams import fraud
from streams.fraud import FraudConfig


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
