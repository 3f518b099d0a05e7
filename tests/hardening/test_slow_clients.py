"""Slow clients cannot pin a worker: a trickled body gets 408; a stream nobody reads is cut off
and billed."""
from __future__ import annotations

import logging
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


def test_stream_client_that_never_reads_is_cut_off_and_billed(gateway_url, fake_provider, api_key,
                                                              settings, caplog):
    """A client that stops reading cannot pin the stream: once the socket buffers are full and
    nothing moves for GATEWAY_WRITE_TIMEOUT_S, the response is abandoned and its row written."""
    settings.GATEWAY_WRITE_TIMEOUT_S = 1.0
    # ~16 MB of answer in 4 KB chunks: far more than the socket buffers between us hold.
    fake_provider.behave("fake-a", reply=" ".join(["x" * 4000] * 4000))
    body = ('{"model": "gpt-test", "stream": true, '
            '"messages": [{"role": "user", "content": "hi"}]}')
    with _connect(gateway_url, rcvbuf=4096) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        started = time.monotonic()
        # Never read; the connection stays open the whole time.
        while not UsageRecord.objects.exists() and time.monotonic() - started < 40:
            time.sleep(0.2)
        waited = time.monotonic() - started
    row = UsageRecord.objects.get()
    assert row.status == "client_disconnected", row.status
    assert waited < 40
    assert len(fake_provider.calls()) == 1
    # Handled as a disconnect, not as an application error with a traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name != "aiohttp.server"]
