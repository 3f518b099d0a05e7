"""ASGI guards in front of Django, for what a view cannot see in time.

- Body limit: a request whose Content-Length exceeds GATEWAY_MAX_BODY_BYTES is answered 413
  before its body is read; a chunked body is counted as it arrives and refused the moment it
  passes the limit (Django would otherwise spool the whole body before the view runs).
- Write timeout: a client that stops reading cannot pin a response forever; after
  GATEWAY_WRITE_TIMEOUT_S without progress the response is abandoned (the view's stream sees
  a disconnect and records its ledger row).
- Body timeout: a client trickling its body (slowloris) gets 408 after GATEWAY_BODY_TIMEOUT_S
  without a new chunk.
- Host: on the paths Django's own chain does not serve (`host_checked`), a Host header not
  in ALLOWED_HOSTS gets 400 before the body is read, as Django answers on every other path;
  GATEWAY_ANY_HOST_PATHS (exact paths, /health by default) are answered for any Host, for
  probes that send the pod's IP. Decisions are cached per Host value (bounded).
- Key guessing: API answers 401 are counted per client address (shared through Redis when
  configured); past AUTH_FAILURES_PER_MINUTE the address gets 429 on the API for a while,
  without its keys even being looked up. The proxy answers 401 only for a missing key or one
  the database confirmed unknown or revoked (gateway.intake), so a key created a moment ago
  never counts. Behind a reverse proxy run uvicorn with --proxy-headers so the address is the
  client's.
- WebSocket (`/v1/realtime`): the Host check and the lockout refuse the handshake (an HTTP
  answer where the server supports the `websocket.http.response` extension, else a close);
  refused handshakes with 401 (or a close with AUTH_FAILED_CLOSE_CODE before accepting) count
  as failed authentications. A message larger than GATEWAY_REALTIME_MAX_MESSAGE_BYTES closes
  the socket with 1009, and one with no message either way for GATEWAY_REALTIME_IDLE_TIMEOUT_S
  with IDLE_CLOSE_CODE; the application then sees the client's disconnect. A client that
  reads nothing for GATEWAY_WRITE_TIMEOUT_S is treated as gone too.
Errors use the surface's shape: Anthropic's under /v1/messages, OpenAI's elsewhere.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time

import orjson
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from gateway.clients import client_pool
from gateway.errors import GatewayError, InvalidRequest
from gateway.responses import anthropic_error_body, openai_error_body

logger = logging.getLogger(__name__)

AUTH_FAILURES_PER_MINUTE = 30
MAX_BLOCKED = 100_000
MAX_HOSTS = 1024

security_logger = logging.getLogger("django.security.DisallowedHost")

# WebSocket close codes: a consumer's refusal of a key (counted like a 401), a session closed
# for idling (as HTTP's 408), a message over the size limit (RFC 6455's "message too big").
AUTH_FAILED_CLOSE_CODE = 4001
IDLE_CLOSE_CODE = 4008
TOO_LARGE_CLOSE_CODE = 1009


# Set in the connection's task when its client stopped reading and the response was abandoned.
_stalled = contextvars.ContextVar("gateway_client_stalled", default=False)


class StalledClientLogFilter(logging.Filter):
    """For the server's error logger: the server reports a response abandoned because its client
    stopped reading as an application that returned without completing its response; the guard
    has already logged it as what it is (a warning), so that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_stalled.get() and "without completing response" in str(record.msg))


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


def _error_body(path: str, status: int, message: str, error_type: str) -> bytes:
    if path.startswith("/v1/messages"):
        return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": None,
                                   "code": error_type}})


async def _send_json(send, status: int, body: bytes, *, retry_after: int | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond(send, path: str, status: int, message: str, error_type: str, *,
                   retry_after: int | None = None) -> None:
    await _send_json(send, status, _error_body(path, status, message, error_type),
                     retry_after=retry_after)


def _gateway_error_body(path: str, exc: GatewayError) -> bytes:
    """`exc` in the surface's shape, as gateway.responses writes it for a view's errors."""
    if path.startswith("/v1/messages"):
        return orjson.dumps(anthropic_error_body(exc))
    return orjson.dumps(openai_error_body(exc))


def _raw_host(scope) -> str:
    """The Host the request names, as Django's HttpRequest._get_raw_host reads it."""
    headers = dict(scope.get("headers", ()))
    if settings.USE_X_FORWARDED_HOST and b"x-forwarded-host" in headers:
        return headers[b"x-forwarded-host"].decode("latin-1")
    if b"host" in headers:
        return headers[b"host"].decode("latin-1")
    server = scope.get("server") or ("", None)
    return server[0] if server[1] is None else f"{server[0]}:{server[1]}"


class HostCheck:
    """Whether a Host value is in ALLOWED_HOSTS, decided as Django's `get_host` does (with
    DEBUG and no ALLOWED_HOSTS, localhost only) and cached per value: at most MAX_HOSTS
    decisions, forgotten together when full or when ALLOWED_HOSTS changes."""

    def __init__(self) -> None:
        self._allowed: list[str] | None = None
        self._decided: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        allowed = settings.ALLOWED_HOSTS
        if allowed != self._allowed:
            self._allowed = list(allowed)
            self._decided = {}
        decision = self._decided.get(host)
        if decision is None:
            patterns = allowed or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
            domain, _port = split_domain_port(host)
            decision = bool(domain) and validate_host(domain, patterns)
            if not decision:
                security_logger.warning("Host %r is not in ALLOWED_HOSTS; answered 400", host[:200])
            if len(self._decided) >= MAX_HOSTS:
                self._decided = {}
            self._decided[host] = decision
        return decision


class Guards:
    """`host_checked`: path prefixes whose Host header is checked here (Django checks the
    others itself)."""

    def __init__(self, app, *, host_checked: tuple[str, ...] = ()) -> None:
        self.app = app
        self.host_checked = host_checked
        self.hosts = HostCheck()
        # address -> monotonic time until which it is refused (bounded; expired entries pruned)
        self._blocked: dict[str, float] = {}

    def reset(self) -> None:
        """Forget refused addresses (tests)."""
        self._blocked.clear()

    def _refused_for(self, address: str) -> float:
        until = self._blocked.get(address)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[address]
            return 0.0
        return left

    async def _auth_failed(self, address: str) -> None:
        wait = await client_pool.ratelimiter().acquire(
            f"authfail:{address}", per_minute=AUTH_FAILURES_PER_MINUTE, cost=1)
        if wait is not None:
            if len(self._blocked) >= MAX_BLOCKED:
                now = time.monotonic()
                self._blocked = {a: t for a, t in self._blocked.items() if t > now}
            self._blocked[address] = time.monotonic() + max(wait, 1.0)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.GATEWAY_MAX_BODY_BYTES
        path = scope.get("path", "")
        api = path.startswith(("/v1/", "/api/"))
        address = (scope.get("client") or ("unknown", 0))[0]
        if (path.startswith(self.host_checked) and path not in settings.GATEWAY_ANY_HOST_PATHS
                and not self.hosts.allows(_raw_host(scope))):
            error = InvalidRequest("the Host header names a host this server does not serve "
                                   "(ALLOWED_HOSTS)", code="invalid_host")
            return await _send_json(send, 400, _gateway_error_body(path, error))
        if api:
            left = self._refused_for(address)
            if left:
                return await _respond(send, path, 429, "too many failed authentication attempts "
                                      "from this address", "rate_limit_error",
                                      retry_after=int(left) + 1)
        message = f"request body exceeds {limit} bytes"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    return await _respond(send, path, 413, message, "request_too_large")
        received = 0
        started = False
        stalled = False
        body_done = False
        body_timeout = settings.GATEWAY_BODY_TIMEOUT_S
        write_timeout = settings.GATEWAY_WRITE_TIMEOUT_S

        async def limited_receive():
            nonlocal received, body_done
            if body_done:
                return await receive()  # waiting for a disconnect: no deadline
            try:
                async with asyncio.timeout(body_timeout):
                    event = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                body_done = not event.get("more_body", False)
                if received > limit:
                    raise BodyTooLarge
            return event

        async def timed_send(event):
            nonlocal started, stalled
            if stalled:
                return  # like a server's send to a client that is gone
            if event["type"] == "http.response.start":
                started = True
                if api and event["status"] == 401:
                    await self._auth_failed(address)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation Django uses to stop a stream whose client left.
            try:
                async with asyncio.timeout(write_timeout):
                    await send(event)
            except TimeoutError:
                # The client stopped reading. Treated as gone: Django stops sending the
                # response as it does for a disconnect, and the view's stream is closed and
                # records its row.
                stalled = True
                logger.warning("%s: the client read nothing for %gs; response abandoned", path,
                               write_timeout)
                raise asyncio.CancelledError from None

        try:
            await self.app(scope, limited_receive, timed_send)
        except BodyTooLarge:
            if not started:
                await _respond(send, path, 413, message, "request_too_large")
        except BodyTimeout:
            if not started:
                await _respond(send, path, 408, f"no request body data for {body_timeout:g}s",
                               "request_timeout")
        finally:
            if stalled:
                # In the server's task (the send ran in Django's), for the log filter above.
                _stalled.set(True)

    async def _websocket(self, scope, receive, send):
        path = scope.get("path", "")
        address = (scope.get("client") or ("unknown", 0))[0]
        refusal = None
        if (path.startswith(self.host_checked) and path not in settings.GATEWAY_ANY_HOST_PATHS
                and not self.hosts.allows(_raw_host(scope))):
            refusal = (400, _gateway_error_body(path, InvalidRequest(
                "the Host header names a host this server does not serve (ALLOWED_HOSTS)",
                code="invalid_host")), None)
        elif left := self._refused_for(address):
            refusal = (429, _error_body(path, 429, "too many failed authentication attempts "
                                        "from this address", "rate_limit_error"), int(left) + 1)
        if refusal is not None:
            return await _ws_refuse(scope, receive, send, *refusal)
        await _WebSocketGuard(self, scope, receive, send, address).run()


async def _ws_refuse(scope, receive, send, status: int, body: bytes,
                     retry_after: int | None) -> None:
    """Refuse a handshake: the HTTP answer where the server can send one, else a close."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = [(b"content-type", b"application/json")]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


class _WebSocketGuard:
    """One socket's guards: the message size limit, the idle timeout and the write timeout.
    The client's receive is kept pending in a task of its own (never cancelled: a server's
    receive need not be safe to cancel), raced against the idle deadline and a stall."""

    def __init__(self, guards: Guards, scope, receive, send, address: str) -> None:
        self.guards, self.scope, self.address = guards, scope, address
        self._receive, self._send = receive, send
        self.limit = settings.GATEWAY_REALTIME_MAX_MESSAGE_BYTES
        self.idle = settings.GATEWAY_REALTIME_IDLE_TIMEOUT_S
        self.last = time.monotonic()
        self.accepted = False
        self.closed: int | None = None  # the code the guard closed the socket with
        self.gone = asyncio.Event()
        self.pending: asyncio.Task | None = None

    async def run(self) -> None:
        try:
            await self.guards.app(self.scope, self.receive, self.send)
        finally:
            if self.pending is not None and not self.pending.done():
                self.pending.cancel()

    async def _close(self, code: int) -> None:
        if self.closed is None:
            self.closed = code
            self.gone.set()
            try:
                await self._send({"type": "websocket.close", "code": code})
            except Exception:  # noqa: BLE001 - the server's socket is already gone
                pass

    async def receive(self):
        while True:
            if self.closed is not None:
                return {"type": "websocket.disconnect", "code": self.closed}
            if self.pending is None:
                self.pending = asyncio.ensure_future(self._receive())
            wait = self.last + self.idle - time.monotonic() if self.accepted else None
            if wait is not None and wait <= 0:
                logger.info("%s: no message either way for %gs; closed", self.scope.get("path"),
                            self.idle)
                await self._close(IDLE_CLOSE_CODE)
                continue
            gone = asyncio.ensure_future(self.gone.wait())
            try:
                await asyncio.wait((self.pending, gone), timeout=wait,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not self.pending.done():
                continue
            event, self.pending = self.pending.result(), None
            if event["type"] == "websocket.receive":
                self.last = time.monotonic()
                data = event.get("bytes") or event.get("text") or ""
                if len(data) > self.limit:
                    logger.info("%s: a message of more than %d bytes; closed",
                                self.scope.get("path"), self.limit)
                    await self._close(TOO_LARGE_CLOSE_CODE)
                    continue
            elif event["type"] == "websocket.disconnect":
                self.closed = self.closed or event.get("code", 1005)
                self.gone.set()
            return event

    async def send(self, event) -> None:
        if self.closed is not None:
            return  # like a server's send to a client that is gone
        kind = event["type"]
        if kind == "websocket.accept":
            self.accepted = True
        elif kind == "websocket.send":
            self.last = time.monotonic()
        elif not self.accepted and (
                (kind == "websocket.http.response.start" and event.get("status") == 401)
                or (kind == "websocket.close" and event.get("code") == AUTH_FAILED_CLOSE_CODE)):
            await self.guards._auth_failed(self.address)
        try:
            async with asyncio.timeout(settings.GATEWAY_WRITE_TIMEOUT_S):
                await self._send(event)
        except TimeoutError:
            logger.warning("%s: the client read nothing for %gs; socket closed",
                           self.scope.get("path"), settings.GATEWAY_WRITE_TIMEOUT_S)
            self.closed = 1006
            self.gone.set()
        if kind == "websocket.close":
            self.closed = self.closed or event.get("code") or 1000
            self.gone.set()
