"""Precision and recall of every fraud rule on the real stack (``ripple evaluate``).

The standard scenario: two programs with ten incidents of every fraud type each, three
honest programs, all through one embedded ``ripple up`` (Tansu, Faust worker, sink,
chDB). At the default thresholds every rule must reach precision >= 0.90 and recall >=
0.95, honest traffic must raise nothing above ``info``, and the money must follow the
verdicts exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ripple.bench import evaluate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> evaluate.Report:
    data = tmp_path_factory.mktemp("evaluate") / "data"
    result = evaluate.run(evaluate.Scenario(), data)
    print("\n" + result.table())
    Path("test-artifacts").mkdir(exist_ok=True)
    Path("test-artifacts/fraud-evaluation.txt").write_text(result.table() + "\n")
    return result


@pytest.mark.parametrize("rule", evaluate.RULES)
def test_rule_reaches_the_precision_and_recall_targets(report: evaluate.Report, rule: str) -> None:
    score = next(r for r in report.rules if r.rule == rule)
    assert score.incidents >= 20, "the standard scenario injects at least 20 incidents per rule"
    assert score.precision >= evaluate.MIN_PRECISION, score.false
    assert score.recall >= evaluate.MIN_RECALL, score.missed


def test_honest_traffic_raises_nothing_above_info(report: evaluate.Report) -> None:
    assert report.honest_above_info == []
    assert set(report.honest_alerts) <= {"info"}


def test_money_follows_the_verdicts(report: evaluate.Report) -> None:
    blocked = report.blocked_orders
    # A ring is judged against the referrer's ancestors in the stream's tree. When a
    # customer's first order is restated to another referrer after the customer already
    # referred a friend, its place stays (SPEC §4: fixed once it refers) and the truth's
    # differs; such a verdict is counted apart, and must stay rare.
    assert blocked["mismatched"] == blocked["chain_placement"] <= 2, blocked["examples"]
    assert blocked["expected"] - 2 <= blocked["found"] <= blocked["expected"]
    assert blocked["expected"] > 0
    assert report.last_click_mismatches == 0
    assert report.passed
