"""The contract every upstream transport implements.

An adapter carries a body already built in its upstream's wire format (gateway.dialects names
the format, the URL and the headers) and hands back an `UpstreamResponse`. Transport failures
stop here: whatever the transport raises (connection errors, timeouts, an unreadable event
stream) reaches the pipeline as an `UpstreamError`, never as an aiohttp exception.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.dialects import Dialect
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
    """A successful upstream answer. `json` and `events` raise only UpstreamError."""
    dialect: Dialect

    async def json(self) -> dict: ...

    def events(self) -> AsyncIterator[tuple[str | None, str]]: ...

    async def close(self) -> None: ...


class Adapter(Protocol):
    async def send(self, *, dialect: Dialect, deployment: Deployment, operation: str,
                   body: dict, stream: bool, request_id: str,
                   forwarded: Mapping[str, str] | None = None) -> UpstreamResponse: ...
