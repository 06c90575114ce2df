"""Reference data every worker needs in full: codes and creators (compacted topics).

Pure containers; :mod:`streams.agents` keeps them current by reading the topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_RATE = 0.10
DEFAULT_HOLD_DAYS = 30


@dataclass(frozen=True, slots=True)
class Code:
    code: str  # lower case
    referrer_id: str
    referrer_type: str  # creator | customer
    issued_ts: int
    active: bool
    expires_ts: int | None
    landing_url: str | None = None


@dataclass(frozen=True, slots=True)
class Referrer:
    referrer_id: str
    referrer_type: str


DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@dataclass
class ReferenceData:
    codes: dict[str, Code] = field(default_factory=dict)
    creators: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the longest per-creator window override seen, so state is kept long enough
    longest_override_ms: int = 0

    def apply(self, topic: str, event: dict[str, Any]) -> None:
        if topic == "codes":
            code = event["code"].lower()
            self.codes[code] = Code(
                code=code,
                referrer_id=event["referrer_id"],
                referrer_type=event["referrer_type"],
                issued_ts=event["issued_ts"],
                active=event.get("active", True) is not False,
                expires_ts=event.get("expires_ts"),
                landing_url=event.get("landing_url"),
            )
        elif topic == "creators":
            self.creators[event["creator_id"]] = event
            plan = event.get("plan") or {}
            if plan.get("click_window_days") is not None:
                self.longest_override_ms = max(self.longest_override_ms, int(plan["click_window_days"] * DAY_MS))
            if plan.get("view_window_hours") is not None:
                self.longest_override_ms = max(self.longest_override_ms, int(plan["view_window_hours"] * HOUR_MS))

    def resolve(self, ref: str | None, at_ts: int) -> Referrer | None:
        """The referrer a code or link slug stands for at event time ``at_ts``, if any.

        Codes are case-insensitive; an inactive code, or one past its ``expires_ts``,
        resolves to nobody.
        """
        code = self.active_code(ref, at_ts) if ref else None
        return Referrer(code.referrer_id, code.referrer_type) if code is not None else None

    def active_code(self, ref: str, at_ts: int) -> Code | None:
        """The code's record when it is active and not expired at ``at_ts`` (codes are
        case-insensitive)."""
        code = self.codes.get(ref.lower())
        if code is None or not code.active:
            return None
        if code.expires_ts is not None and at_ts >= code.expires_ts:
            return None
        return code

    def knows(self, ref: str | None) -> bool:
        return bool(ref) and ref.lower() in self.codes  # type: ignore[union-attr]

    def plan(self, referrer_id: str) -> dict[str, Any]:
        plan: dict[str, Any] = self.creators.get(referrer_id, {}).get("plan") or {}
        return plan

    def click_window_ms(self, referrer_id: str, default: int) -> int:
        days = self.plan(referrer_id).get("click_window_days")
        return default if days is None else int(days * DAY_MS)

    def view_window_ms(self, creator_id: str, default: int) -> int:
        hours = self.plan(creator_id).get("view_window_hours")
        return default if hours is None else int(hours * HOUR_MS)

    def referrer_type(self, referrer_id: str) -> str:
        return "creator" if referrer_id in self.creators else "customer"
