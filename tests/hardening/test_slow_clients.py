"""Slow clients cannot pin a worker: a trickled body gets 408, a reader that stops is dropped."""
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


def test_a_client_that_stops_reading_is_dropped_and_billed(gateway_url, fake_provider, api_key, settings):
    settings.GATEWAY_WRITE_TIMEOUT_S = 2.0
    fake_provider.behave("fake-a", reply=" ".join(["word"] * 40_000))
    body = b'{"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    with _connect(gateway_url, rcvbuf=4096) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        sock.recv(1024)  # the response starts, then this client never reads again
        deadline = time.monotonic() + 90
        while not UsageRecord.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    row = UsageRecord.objects.get()
    assert row.status == "client_disconnected"
    assert row.output_tokens > 0
