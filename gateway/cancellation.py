"""Task cancellation that a library call swallowed, delivered after the call returns."""
from __future__ import annotations

import asyncio


def reraise_swallowed_cancel() -> None:
    """Raise CancelledError when this task was asked to stop but the call it awaited swallowed it.

    Seen with redis-py under task cancellation (a client disconnect cancels the request task
    while a script or pipeline is in flight): the call returns or fails with a Redis error, the
    task's cancellation stays requested, and nothing would ever deliver it. Call it right after
    such a call, on its success and its failure path alike."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
