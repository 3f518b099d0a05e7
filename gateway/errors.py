"""Errors the proxy raises; each surface renders them in its own shape.

`GatewayError` carries an HTTP status, an error type and code in OpenAI's vocabulary; the
Anthropic surface maps `type` onto its own names. Messages never contain secrets.
"""
from __future__ import annotations


class GatewayError(Exception):
    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"
    code = "model_not_found"


class Conflict(GatewayError):
    status = 409
    type = "conflict_error"
    code = "idempotency_in_progress"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "request_too_large"
    code = "request_too_large"


class Unprocessable(GatewayError):
    status = 422
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"


class UpstreamFailed(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "overloaded_error"
    code = "no_healthy_deployment"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class RouteNotFound(NotFound):
    code = "route_not_found"


class InternalError(GatewayError):
    status = 500
    type = "api_error"
    code = "internal_error"
