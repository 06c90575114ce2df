"""Commission: plans, monthly tiers, the ledger of one order. Pure logic, JSON-able state.

Two keyed states feed the ledger:

* the **referrer book** (keyed by referrer): the orders credited to a referrer under the
  program's commission model, per calendar month, so each order's tier rate follows from
  its place in the month (SPEC §3.4: tiers are counted per calendar month);
* the **order ledger** (keyed by order id): what each referrer earns on the order and its
  refunds, from which the ledger entries are derived — commission, then a pro-rata
  ``reversal`` for a refund inside the hold period, or a negative ``clawback`` after it.

Both compute their outputs from their whole state every time it changes, so a replay
writes the same values again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.records import Booking, Refund, Terms
from streams.reference import DEFAULT_HOLD_DAYS, DEFAULT_RATE

DAY_MS = 86_400_000
KEEP_MONTHS = 3


@dataclass(frozen=True)
class Plan:
    rate: float = DEFAULT_RATE
    tiers: tuple[tuple[float, float], ...] = ()  # (min_conversions, rate), ascending
    flat_fee_minor: int = 0
    hold_days: int = DEFAULT_HOLD_DAYS
    override_rate: float = 0.0

    def rate_at(self, conversions: float) -> float:
        """The rate for the order that brings the month's conversions to ``conversions``."""
        rate = self.rate
        for min_conversions, tier_rate in self.tiers:
            if conversions >= min_conversions - 1e-9:
                rate = tier_rate
        return rate


def plan_from(raw: dict[str, Any] | None) -> Plan:
    raw = raw or {}
    tiers = tuple(sorted((float(t["min_conversions"]), float(t["rate"])) for t in raw.get("tiers") or ()))
    return Plan(
        rate=float(raw.get("rate", DEFAULT_RATE)),
        tiers=tiers,
        flat_fee_minor=int(raw.get("flat_fee_minor") or 0),
        hold_days=int(raw.get("hold_days", DEFAULT_HOLD_DAYS)),
        override_rate=float(raw.get("override_rate") or 0.0),
    )


def month_of(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m")


def month_start_ms(month: str) -> int:
    return int(datetime.strptime(month + "-01", "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


# -- referrer book ---------------------------------------------------------------------
# state: {"m": {month: {order_id: Booking}}, "seq": n} (streams.records.Booking)
ROW_FIELDS = (
    "referrer_type",
    "root_creator_id",
    "touch_type",
    "touch_event_id",
    "ctot_ms",
    "status",
    "reasons",
    "generation",
)


def new_book() -> dict[str, Any]:
    return {"m": {}, "seq": 0}


def next_seq(book: dict[str, Any]) -> int:
    book["seq"] += 1
    return int(book["seq"])


def book_order(book: dict[str, Any], row: dict[str, Any], plan: Plan) -> tuple[bool, list[tuple[str, Booking]]]:
    """Record one commission-model credit; return (is_new_month, orders whose terms changed).

    A row older (lower version) than what the book holds is ignored. An order whose
    credit falls to 0 leaves the book and is returned with credit 0.
    """
    month = month_of(row["ts"])
    orders: dict[str, Booking] = book["m"].setdefault(month, {})
    is_new_month = not orders
    current = orders.get(row["order_id"])
    if current is not None and current.version > row["version"]:
        return False, []
    changed: list[tuple[str, Booking]] = []
    extra = {k: row[k] for k in ROW_FIELDS}
    if row["credit"] <= 0:
        gone = Booking(row["ts"], 0.0, row["amount_minor"], row["currency"], row["version"], 0.0, extra)
        if current is None:
            return False, [(row["order_id"], gone)]
        del orders[row["order_id"]]
        changed.append((row["order_id"], gone))
    else:
        entry = Booking(row["ts"], row["credit"], row["amount_minor"], row["currency"], row["version"], -1.0, extra)
        if current is not None:
            entry.rate = current.rate
            if current.terms() == entry.terms() and current.row == extra:
                current.version = row["version"]
                return False, [(row["order_id"], current)]  # same terms: emit again, idempotent
        orders[row["order_id"]] = entry
    cumulative = 0.0
    for order_id, entry in sorted(orders.items(), key=lambda kv: (kv[1].ts, kv[0])):
        cumulative += entry.credit
        rate = plan.rate_at(cumulative)
        if rate != entry.rate or order_id == row["order_id"]:
            entry.rate = rate
            changed.append((order_id, entry))
    if not orders:
        del book["m"][month]
    return is_new_month and bool(orders), changed


def prune_book(book: dict[str, Any], now_ms: int) -> None:
    months = sorted(book["m"])
    keep = {month_of(now_ms - i * 31 * DAY_MS) for i in range(KEEP_MONTHS)}
    for month in months:
        if month not in keep and month < min(keep):
            del book["m"][month]


# -- order ledger ----------------------------------------------------------------------
# state: {"c": {"referrer|kind": Terms}, "r": {refund_event_id: Refund}, "seq": n,
#         "approved": bool, "p": partition} (streams.records)
def new_ledger(partition: int) -> dict[str, Any]:
    return {"c": {}, "r": {}, "seq": 0, "approved": False, "p": partition}


def ledger_set_commission(ledger: dict[str, Any], fact: dict[str, Any]) -> bool:
    """Store a referrer's terms on the order (its commission, or a chain override for the
    referrer's parent); False when the fact is older than what is held."""
    key = f"{fact['referrer_id']}|{fact.get('kind', 'commission')}"
    current = ledger["c"].get(key)
    if current is not None and current.version > fact["version"]:
        return False
    ledger["c"][key] = Terms(
        credit=fact["credit"],
        amount=fact["amount_minor"],
        rate=fact["rate"],
        currency=fact["currency"],
        ts=fact["ts"],
        hold_days=fact["hold_days"],
        version=fact["version"],
        kind=fact.get("kind", "commission"),
    )
    return True


def ledger_add_refund(ledger: dict[str, Any], refund: dict[str, Any]) -> bool:
    if refund["event_id"] in ledger["r"]:
        return False
    ledger["r"][refund["event_id"]] = Refund(refund["ts"], refund["amount_minor"])
    return True


def hold_end(ledger: dict[str, Any]) -> int | None:
    ends = [c.ts + c.hold_days * DAY_MS for c in ledger["c"].values()]
    return min(ends) if ends else None


def ledger_entries(order_id: str, ledger: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ledger entry of the order, from its whole state."""
    ledger["seq"] += 1
    version = ledger["seq"]
    approved = ledger["approved"]
    refunds = sorted(ledger["r"].items(), key=lambda kv: (kv[1].ts, kv[0]))
    entries: list[dict[str, Any]] = []
    for key, terms in sorted(ledger["c"].items()):
        credit, amount, rate, currency, ts = terms.credit, terms.amount, terms.rate, terms.currency, terms.ts
        kind = terms.kind
        referrer_id = key.rsplit("|", 1)[0]
        hold_until = ts + terms.hold_days * DAY_MS
        status = "approved" if approved else "pending"
        entries.append(
            _entry(
                f"{order_id}:{referrer_id}:{kind}",
                order_id,
                referrer_id,
                kind,
                round(credit * amount * rate),
                currency,
                status,
                ts,
                version,
            )
        )
        refunded = 0
        for refund_id, refund in refunds:
            refund_ts, refund_amount = refund.ts, refund.amount
            portion = max(0, min(refund_amount, amount - refunded))
            refunded += portion
            late = refund_ts >= hold_until
            refund_kind = "clawback" if late else "reversal"
            entries.append(
                _entry(
                    f"{order_id}:{referrer_id}:{kind}:{refund_kind}:{refund_id}",
                    order_id,
                    referrer_id,
                    refund_kind,
                    -round(credit * portion * rate),
                    currency,
                    "approved" if late else status,
                    refund_ts,
                    version,
                )
            )
    return entries


def _entry(
    entry_id: str,
    order_id: str,
    referrer_id: str,
    kind: str,
    minor: int,
    currency: str,
    status: str,
    ts: int,
    version: int,
) -> dict[str, Any]:
    return {
        "entry_id": entry_id,
        "order_id": order_id,
        "referrer_id": referrer_id,
        "kind": kind,
        "commission_minor": minor,
        "currency": currency,
        "status": status,
        "ts": ts,
        "version": version,
    }


def flat_fee_entry(referrer_id: str, month: str, plan: Plan, currency: str) -> dict[str, Any] | None:
    if plan.flat_fee_minor <= 0:
        return None
    return _entry(
        f"flat_fee:{referrer_id}:{month}",
        "",
        referrer_id,
        "flat_fee",
        plan.flat_fee_minor,
        currency,
        "approved",
        month_start_ms(month),
        1,
    )
