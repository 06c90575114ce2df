from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def outbound() -> Iterator[Any]:
    """An Outbound whose producer is never flushed: the agent handler tests read what an
    Outbox would send from the Outbox itself (tests/agent_kit.py)."""
    from agent_kit import unsent

    with unsent() as out:
        yield out
