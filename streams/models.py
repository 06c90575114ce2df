"""Attribution models: how one order's credit is spread over its touches. Pure functions.

Every model returns one weight per touch, in the order of the touches (oldest first),
summing to 1 for a non-empty list.
"""

from __future__ import annotations

from collections.abc import Sequence

LAST_CLICK = "last_click"
FIRST_CLICK = "first_click"
LINEAR = "linear"
TIME_DECAY = "time_decay"
POSITION_BASED = "position_based"
MODELS = (LAST_CLICK, FIRST_CLICK, LINEAR, TIME_DECAY, POSITION_BASED)
#: code-vs-link policies (SPEC §3.2)
POLICIES = ("code_wins", "click_wins", "split")

DEFAULT_HALF_LIFE_MS = 7 * 86_400_000
POSITION_ENDS = 0.4  # first and last touch each; the middle shares the rest


def weights(
    model: str, touch_ts: Sequence[int], order_ts: int, half_life_ms: int = DEFAULT_HALF_LIFE_MS
) -> list[float]:
    n = len(touch_ts)
    if n == 0:
        return []
    if model == LAST_CLICK:
        return [0.0] * (n - 1) + [1.0]
    if model == FIRST_CLICK:
        return [1.0] + [0.0] * (n - 1)
    if model == LINEAR:
        return [1.0 / n] * n
    if model == TIME_DECAY:
        raw = [2.0 ** (-(order_ts - ts) / half_life_ms) for ts in touch_ts]
        total = sum(raw)
        return [w / total for w in raw]
    if model == POSITION_BASED:
        if n == 1:
            return [1.0]
        if n == 2:
            return [0.5, 0.5]
        middle = (1.0 - 2 * POSITION_ENDS) / (n - 2)
        return [POSITION_ENDS] + [middle] * (n - 2) + [POSITION_ENDS]
    raise ValueError(f"unknown attribution model {model!r}")
