"""Waiting for a state that changes under an event replaced at every change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(reached: Callable[[], bool], changed: Callable[[], asyncio.Event],
                     timeout: float) -> bool:
    """Wait until `reached()` holds, checking again each time the event `changed()` returns
    (a fresh one per change) is set; False when `timeout` seconds pass first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not reached():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(changed().wait(), remaining)
        except TimeoutError:
            return reached()
    return True
