"""Commission plans, monthly tiers and the ledger of one order (streams/commission.py)."""

from __future__ import annotations

from typing import Any

import pytest

from streams import commission as comm

DAY = 86_400_000
JAN = 1_767_225_600_000  # 2026-01-01T00:00Z
FEB = 1_769_904_000_000  # 2026-02-01T00:00Z
PLAN = comm.plan_from(
    {
        "rate": 0.10,
        "tiers": [{"min_conversions": 50, "rate": 0.15}, {"min_conversions": 10, "rate": 0.12}],
        "hold_days": 30,
        "flat_fee_minor": 50_000,
    }
)


def row(order_id: str, ts: int, credit: float = 1.0, amount: int = 10_000, version: int = 2) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "ts": ts,
        "credit": credit,
        "amount_minor": amount,
        "currency": "USD",
        "version": version,
        "referrer_type": "creator",
        "root_creator_id": "",
        "touch_type": "click",
        "touch_event_id": "c",
        "ctot_ms": 1,
        "status": "ok",
        "reasons": [],
        "generation": 0,
    }


def rates(book: dict[str, Any], month: str = "2026-01") -> dict[str, float]:
    return {o: e.rate for o, e in book["m"].get(month, {}).items()}


@pytest.mark.parametrize(
    "nth, rate",
    [(1, 0.10), (9, 0.10), (10, 0.12), (11, 0.12), (49, 0.12), (50, 0.15), (51, 0.15)],
    ids=lambda v: str(v),
)
def test_tier_of_the_nth_conversion_of_a_month(nth: int, rate: float) -> None:
    book = comm.new_book()
    for i in range(1, nth + 1):
        comm.book_order(book, row(f"o{i:03d}", JAN + i * 1000), PLAN)
    assert rates(book)[f"o{nth:03d}"] == rate


def test_tiers_restart_each_calendar_month() -> None:
    book = comm.new_book()
    for i in range(12):
        comm.book_order(book, row(f"jan{i}", JAN + i * 1000), PLAN)
    new_month, changed = comm.book_order(book, row("feb0", FEB), PLAN)
    assert new_month and [o for o, _ in changed] == ["feb0"]
    assert rates(book, "2026-02")["feb0"] == 0.10


def test_an_earlier_order_arriving_late_moves_the_tier_of_later_ones() -> None:
    book = comm.new_book()
    for i in range(2, 11):  # orders 2..10: the 9th of the month is o10
        comm.book_order(book, row(f"o{i:02d}", JAN + i * 1000), PLAN)
    assert rates(book)["o10"] == 0.10
    _, changed = comm.book_order(book, row("o01", JAN + 1000), PLAN)
    assert dict((o, e.rate) for o, e in changed) == {"o01": 0.10, "o10": 0.12}


def test_an_order_that_loses_its_credit_leaves_the_book() -> None:
    book = comm.new_book()
    for i in range(1, 11):
        comm.book_order(book, row(f"o{i:02d}", JAN + i * 1000), PLAN)
    assert rates(book)["o10"] == 0.12
    _, changed = comm.book_order(book, row("o01", JAN + 1000, credit=0.0, version=3), PLAN)
    assert dict((o, e.credit) for o, e in changed)["o01"] == 0.0
    assert rates(book)["o10"] == 0.10 and "o01" not in rates(book)


def test_a_stale_version_is_ignored() -> None:
    book = comm.new_book()
    comm.book_order(book, row("o1", JAN, version=5), PLAN)
    assert comm.book_order(book, row("o1", JAN, credit=0.0, version=4), PLAN) == (False, [])
    assert "o1" in rates(book)


def test_repeating_a_row_changes_nothing() -> None:
    book = comm.new_book()
    comm.book_order(book, row("o1", JAN), PLAN)
    before = rates(book)
    new_month, changed = comm.book_order(book, row("o1", JAN), PLAN)
    assert not new_month and rates(book) == before and [o for o, _ in changed] == ["o1"]


def test_flat_fee_once_per_month() -> None:
    fee = comm.flat_fee_entry("cr-jane", "2026-01", PLAN, "USD")
    assert fee is not None and fee["entry_id"] == "flat_fee:cr-jane:2026-01" and fee["commission_minor"] == 50_000
    assert comm.flat_fee_entry("cr-jane", "2026-01", comm.plan_from({}), "USD") is None


def ledger_with(credit: float = 1.0, rate: float = 0.10, amount: int = 10_000) -> dict[str, Any]:
    ledger = comm.new_ledger(0)
    comm.ledger_set_commission(
        ledger,
        {
            "referrer_id": "cr-jane",
            "credit": credit,
            "amount_minor": amount,
            "rate": rate,
            "currency": "USD",
            "ts": JAN,
            "hold_days": 30,
            "version": 1,
        },
    )
    return ledger


def by_kind(entries: list[dict[str, Any]]) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for e in entries:
        out.setdefault(e["kind"], []).append((e["commission_minor"], e["status"]))
    return out


def test_commission_is_credit_times_amount_times_rate_and_pending() -> None:
    entries = comm.ledger_entries("o1", ledger_with(credit=0.5))
    assert by_kind(entries) == {"commission": [(500, "pending")]}


def test_refund_inside_the_hold_reverses_pro_rata() -> None:
    ledger = ledger_with()
    comm.ledger_add_refund(ledger, {"event_id": "r1", "ts": JAN + 5 * DAY, "amount_minor": 2500})
    kinds = by_kind(comm.ledger_entries("o1", ledger))
    assert kinds == {"commission": [(1000, "pending")], "reversal": [(-250, "pending")]}


def test_refund_after_the_hold_is_a_clawback() -> None:
    ledger = ledger_with()
    ledger["approved"] = True
    comm.ledger_add_refund(ledger, {"event_id": "r1", "ts": JAN + 30 * DAY, "amount_minor": 10_000})
    kinds = by_kind(comm.ledger_entries("o1", ledger))
    assert kinds == {"commission": [(1000, "approved")], "clawback": [(-1000, "approved")]}


def test_refund_1_ms_before_the_hold_ends_is_still_a_reversal() -> None:
    ledger = ledger_with()
    comm.ledger_add_refund(ledger, {"event_id": "r1", "ts": JAN + 30 * DAY - 1, "amount_minor": 10_000})
    assert "reversal" in by_kind(comm.ledger_entries("o1", ledger))


def test_duplicate_refund_changes_nothing_and_refunds_are_capped() -> None:
    ledger = ledger_with()
    assert comm.ledger_add_refund(ledger, {"event_id": "r1", "ts": JAN + DAY, "amount_minor": 8000})
    assert not comm.ledger_add_refund(ledger, {"event_id": "r1", "ts": JAN + DAY, "amount_minor": 8000})
    comm.ledger_add_refund(ledger, {"event_id": "r2", "ts": JAN + 2 * DAY, "amount_minor": 8000})
    entries = comm.ledger_entries("o1", ledger)
    assert sum(e["commission_minor"] for e in entries) == 0  # never below zero on one order
    assert sorted(v for v, _ in by_kind(entries)["reversal"]) == [-800, -200]


def test_entries_are_deterministic_with_increasing_versions() -> None:
    ledger = ledger_with()
    first = comm.ledger_entries("o1", ledger)
    second = comm.ledger_entries("o1", ledger)
    strip = lambda es: [{k: v for k, v in e.items() if k != "version"} for e in es]  # noqa: E731
    assert strip(first) == strip(second)
    assert second[0]["version"] > first[0]["version"]


def test_stale_commission_fact_is_ignored() -> None:
    ledger = ledger_with()
    old = {
        "referrer_id": "cr-jane",
        "credit": 0.0,
        "amount_minor": 10_000,
        "rate": 0.1,
        "currency": "USD",
        "ts": JAN,
        "hold_days": 30,
        "version": 0,
    }
    assert not comm.ledger_set_commission(ledger, old)
    assert comm.hold_end(ledger) == JAN + 30 * DAY
