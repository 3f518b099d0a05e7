"""Slow clients cannot pin a worker: a trickled body gets 408."""
from __future__ import annotations

import socket
import time

from usage.models import UsageRecord


def _connect(url: str, *, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    sock.settimeout(15)
    return sock


def test_slowloris_body_gets_408(gateway_url, demo_key, settings):
    settings.GATEWAY_BODY_TIMEOUT_S = 1.0
    with _connect(gateway_url) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {demo_key}\r\nContent-Length: 500\r\n\r\n{{\"model\"".encode())
        started = time.monotonic()
        head = sock.recv(65536).decode(errors="replace")
    assert head.startswith("HTTP/1.1 408"), head[:200]
    assert time.monotonic() - started < 10
    assert UsageRecord.objects.count() == 0
