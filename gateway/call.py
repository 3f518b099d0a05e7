"""One request's state, from the moment it is read to its ledger row, and its transitions.

The pipeline (gateway.pipeline) and its phases change a `Call` only through the methods
below; nothing assigns its fields from outside. Usage arrives only as the IR `Usage` a codec
produced (`usage_reported`), or as the gateway's own estimate (`prompt_estimated`,
`output_estimated`). `finish_begin` is the one door to the ledger row: it opens once.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from django.http import HttpRequest
from django.utils import timezone

from gateway.routing_state import Lease
from gateway.tracing import TraceCapture, request_tracer
from gateway.types import Usage
from providers.selectors import Deployment, KeyInfo
from usage.budgets import BudgetLimit
from usage.models import UsageSource, UsageStatus

# nginx's "client closed request": the status of a call whose client left before any response.
CLIENT_CLOSED = 499


@dataclass(slots=True)
class Call:
    surface: str
    client_request_id: str
    request_id: str = field(default_factory=lambda: f"req_{uuid.uuid4().hex}")
    started: float = field(default_factory=time.monotonic)
    created_at: object = field(default_factory=timezone.now)
    key: KeyInfo | None = None
    public_model: str = ""
    stream: bool = False
    deployment: Deployment | None = None
    first_token_at: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    # Of the cache writes, those kept one hour (the rest: five minutes).
    cache_creation_1h_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    usage_source: str = UsageSource.ESTIMATED
    status: str = UsageStatus.OK
    http_status: int = 200
    error_type: str = ""
    idempotency_key: str = ""
    # Attribution (gateway.intake.attribution): tags comma-separated, the client's end user.
    tags: str = ""
    end_user: str = ""
    idempotency_claim: int | None = None
    # Bytes sent to the client, kept only while an Idempotency-Key claim needs them.
    captured: list[bytes] | None = None
    lease: Lease | None = None
    budget_reserved: bool = False
    # The budgets reserved in Redis (settled in Redis, spend added to the database counters).
    budget_shared: tuple[BudgetLimit, ...] = ()
    tpm_charged: int = 0
    # The request's intent (usage.intents) is written: a crash from here on leaves a `lost` row.
    intent_kept: bool = False
    # Kept for the request's span only while tracing is on (gateway.tracing).
    trace: TraceCapture | None = None
    active: bool = False
    finished: bool = False

    # -- what the request is -------------------------------------------------------------
    def authenticated(self, key: KeyInfo) -> None:
        self.key = key

    def described(self, *, model: str, stream: bool) -> None:
        self.public_model, self.stream = model, stream

    def attributed(self, *, tags: tuple[str, ...], end_user: str) -> None:
        """Who and what the request is for, as the client labelled it (bounded by the caller)."""
        self.tags, self.end_user = ",".join(tags), end_user

    # -- admission -------------------------------------------------------------------------
    def claim_held(self, claim_id: int) -> None:
        """An Idempotency-Key claim: the response is captured to be stored with the row."""
        self.idempotency_claim, self.captured = claim_id, []

    def claim_dropped(self) -> int | None:
        """The claim, given up (released, or turned into a stored response); returns its id."""
        claim, self.idempotency_claim, self.captured = self.idempotency_claim, None, None
        return claim

    def tpm_taken(self, tokens: int) -> None:
        self.tpm_charged = tokens

    def budget_held(self, *, shared: tuple[BudgetLimit, ...] = ()) -> None:
        """A budget reservation: in Redis for `shared` limits, else in the database."""
        if shared:
            self.budget_shared = shared
        else:
            self.budget_reserved = True

    def intent_written(self) -> None:
        self.intent_kept = True

    # -- routing ---------------------------------------------------------------------------
    def activated(self) -> bool:
        """Counted as in flight; False if it already was."""
        if self.active:
            return False
        self.active = True
        return True

    def deactivated(self) -> bool:
        if not self.active:
            return False
        self.active = False
        return True

    def routed(self, deployment: Deployment) -> None:
        self.deployment = deployment

    def leased(self, lease: Lease) -> None:
        self.lease = lease

    def lease_taken(self) -> Lease | None:
        lease, self.lease = self.lease, None
        return lease

    # -- the answer ------------------------------------------------------------------------
    def prompt_estimated(self, tokens: int) -> None:
        """Until the upstream reports usage, the call bills this estimate of its prompt."""
        self.input_tokens = tokens
        self.usage_source = UsageSource.ESTIMATED

    def usage_reported(self, usage: Usage) -> None:
        """Usage as the upstream reported it (IR counts: input includes cached tokens)."""
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.cached_tokens = usage.cached_tokens
        self.cache_creation_tokens = usage.cache_creation_tokens
        self.cache_creation_1h_tokens = usage.cache_creation_1h_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.audio_input_tokens = usage.audio_input_tokens
        self.audio_output_tokens = usage.audio_output_tokens
        self.image_input_tokens = usage.image_input_tokens
        self.image_output_tokens = usage.image_output_tokens
        self.usage_source = UsageSource.REPORTED

    def output_estimated(self, tokens: int, *, prompt: Usage | None = None) -> None:
        """No final usage: the output is estimated (and the prompt taken from what the upstream
        said when its stream began, if it said)."""
        if prompt is not None and prompt.input_tokens:
            self.input_tokens = prompt.input_tokens
            self.cached_tokens = prompt.cached_tokens
            self.cache_creation_tokens = prompt.cache_creation_tokens
            self.cache_creation_1h_tokens = prompt.cache_creation_1h_tokens
            self.audio_input_tokens = prompt.audio_input_tokens
            self.image_input_tokens = prompt.image_input_tokens
        self.output_tokens = tokens
        self.usage_source = UsageSource.ESTIMATED

    def nothing_billed(self) -> None:
        """No answer was produced (the upstream's body was unreadable): bill nothing."""
        self.input_tokens = self.output_tokens = self.cached_tokens = 0
        self.cache_creation_tokens = self.cache_creation_1h_tokens = self.reasoning_tokens = 0
        self.audio_input_tokens = self.audio_output_tokens = 0
        self.image_input_tokens = self.image_output_tokens = 0

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def tokens(self) -> dict[str, int]:
        """The call's tokens per class, as the ledger's columns (usage.pricing.TOKEN_FIELDS)."""
        write_1h = min(self.cache_creation_1h_tokens, self.cache_creation_tokens)
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cached_tokens": self.cached_tokens,
                "cache_write_5m_tokens": self.cache_creation_tokens - write_1h,
                "cache_write_1h_tokens": write_1h, "reasoning_tokens": self.reasoning_tokens,
                "audio_input_tokens": self.audio_input_tokens,
                "audio_output_tokens": self.audio_output_tokens,
                "image_input_tokens": self.image_input_tokens,
                "image_output_tokens": self.image_output_tokens}

    def failed(self, *, status: str, error_type: str, http_status: int | None = None) -> None:
        """The call's outcome is not `ok`. `http_status` defaults to what the client got
        already (a stream's 200)."""
        self.status, self.error_type = status, error_type
        if http_status is not None:
            self.http_status = http_status

    def disconnected(self, *, before_response: bool = False) -> None:
        self.failed(status=UsageStatus.CLIENT_DISCONNECTED, error_type="client_disconnected",
                    http_status=CLIENT_CLOSED if before_response else None)
        self.captured = None

    def finish_begin(self) -> bool:
        """True exactly once: the caller then writes the call's one ledger row."""
        if self.finished:
            return False
        self.finished = True
        return True


def call_begin(request: HttpRequest, *, surface: str) -> Call:
    sent = request.headers.get("x-request-id", "")
    # The ledger's id is always ours (clients reuse theirs); the response echoes the client's
    # id when it sent a valid one (RequestIdMiddleware), else carries the ledger's.
    call = Call(surface=surface,
                client_request_id=sent if sent and request.request_id == sent else "")
    if not call.client_request_id:
        request.request_id = call.request_id
    call.idempotency_key = request.headers.get("idempotency-key", "")[:255]
    if request_tracer.enabled:
        call.trace = request_tracer.capture(request)
    return call
