"""An agent that takes its inputs in event-time order per task: the wiring around an
:class:`streams.ordered_input.OrderedInput`.

Each batch of the agent's stream is split into ``(ts, item)`` events and buffered; what
the task may take now is handed, in order, to ``handle``. A task waiting for a lagging
input may be allowed to go on while no batch comes: :meth:`OrderedAgent.wake` (called
every :data:`IDLE_CHECK_S`) handles what it may take then. A lock keeps the two apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.batch import Guard, Outbox
from streams.ordered_input import OrderedInput

#: how often a task waiting for a lagging input checks whether its wait is over
IDLE_CHECK_S = 0.05

Items = Callable[[Any], Awaitable[list[tuple[int, Any]]]]
Handle = Callable[[list[Any], Outbox], Awaitable[None]]


class OrderedAgent:
    """``items``: a message's ``(ts, item)`` events; ``handle``: a task's items in order."""

    def __init__(self, source: OrderedInput, guarded: Guard, items: Items, handle: Handle) -> None:
        self.source = source
        self.guarded = guarded
        self.items = items
        self.handle = handle
        #: held by a batch from its first read of state to its last changelog record, and
        #: by :meth:`wake`: the two change the same state
        self.lock = asyncio.Lock()
        name = source.name
        self.receive_name, self.drain_name = f"receive_{name}_batch", f"drain_{name}"

    async def run(self, stream: Any, batch: int, within: float) -> None:
        """The agent's body: batches of its stream, never acknowledged by Faust itself."""
        self.source.attach(stream)
        async for events in stream.noack_take(batch, within=within):
            await self.guarded(self.receive, events, self.lock, name=self.receive_name)

    async def receive(self, events: list[Any], box: Outbox) -> None:
        await self.source.receive(events, box, self.items)
        await self.drain(events, box)

    async def drain(self, events: list[Any], box: Outbox) -> None:
        del events  # what the task may take comes from the buffers
        await self.handle(self.source.taken(box), box)
        self.source.regulate()

    async def wake(self) -> None:
        """Handle what the task may take now that a wait may be over (no batch came)."""
        if self.source.has_buffered() and not self.lock.locked():
            await self.guarded(self.drain, [], self.lock, name=self.drain_name)


async def wake_while_running(agents: Sequence[OrderedAgent], running: Callable[[], bool]) -> None:
    """The task that lets each ordered agent go on once its wait for a lagging input ends."""
    while running():
        await asyncio.sleep(IDLE_CHECK_S)
        for agent in agents:
            await agent.wake()
