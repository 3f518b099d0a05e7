"""How an API surface answers (the pipeline's `Output` for gateway/surfaces/*): an upstream
of the client's own wire format is passed through (its body with the public model name, its
stream through the client codec's `Passthrough`); any other is translated from the IR (the
client codec's `format_response` and `StreamEncoder`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.http import HttpResponse

from gateway.call import Call
from gateway.dialects import Dialect
from gateway.errors import GatewayError
from gateway.pipeline import Job
from gateway.relay import StreamRelay
from gateway.types import ChatResponse


@dataclass(frozen=True, slots=True)
class ApiOutput:
    """`wire`: the client's wire format (None: nothing is passed through); `format_response`
    (IR response, job, public model, request id) -> body; `encoder` (job, public model,
    request id) -> StreamEncoder; `passthrough` (job, public model) -> Passthrough."""
    error: Callable[[GatewayError], HttpResponse]
    format_response: Callable[[ChatResponse, Job, str, str], dict[str, Any]] | None = None
    encoder: Callable[[Job, str, str], Any] | None = None
    wire: str | None = None
    passthrough: Callable[[Job, str], Any] | None = None

    def relay(self, call: Call, job: Job, dialect: Dialect) -> StreamRelay:
        if dialect.wire == self.wire:
            return StreamRelay(call, codec=dialect.codec,
                               passthrough=self.passthrough(job, call.public_model))
        return StreamRelay(call, codec=dialect.codec,
                           encoder=self.encoder(job, call.public_model, call.request_id))

    def opening(self, call: Call) -> tuple[bytes, ...]:
        return ()

    def body(self, call: Call, job: Job, dialect: Dialect, data: dict[str, Any],
             resp: ChatResponse | None) -> tuple[int, dict[str, Any]]:
        if dialect.wire == self.wire:
            data["model"] = call.public_model
            return 200, data
        return 200, self.format_response(resp, job, call.public_model, call.request_id)
