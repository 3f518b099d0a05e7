"""The contract every upstream adapter implements."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from providers.selectors import Deployment


class UpstreamError(Exception):
    """The upstream answered with an error or could not be reached.

    `retryable` errors (connect failures, 429, 5xx, timeouts before the first byte) move the
    request to the next deployment. `message` is safe to show a client: it never holds secrets.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None, error_class: str = "upstream_error",
                 timeout: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.error_class = error_class
        self.timeout = timeout


class UpstreamResponse(Protocol):
    dialect: str

    async def json(self) -> dict: ...

    def events(self) -> AsyncIterator[tuple[str | None, str]]: ...

    async def close(self) -> None: ...


class Adapter(Protocol):
    """`dialect` names the wire format the upstream speaks ("openai_chat" or
    "anthropic_messages"); `send` posts an already-built body of that dialect."""

    dialect: str

    async def send(self, *, deployment: Deployment, path: str, body: dict, stream: bool,
                   request_id: str) -> UpstreamResponse: ...
