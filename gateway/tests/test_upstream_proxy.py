"""Upstream calls honour HTTP(S)_PROXY and NO_PROXY (CONTRACT §2), read once at startup."""
from __future__ import annotations

import json
import socket
import threading

import openai
import pytest

from providers.config_file import config_parse
from providers.services import config_apply

COMPLETION = {"id": "chatcmpl-proxied", "object": "chat.completion", "created": 1, "model": "up",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "via proxy"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


class ForwardProxy:
    """A plain HTTP forward proxy stand-in on loopback: records each request line and answers
    it itself (the upstream host does not exist)."""

    def __init__(self) -> None:
        self.request_lines: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while line := reader.readline():
                self.request_lines.append(line.decode().strip())
                length = 0
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                reader.read(length)
                body = json.dumps(COMPLETION).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def proxy():
    server = ForwardProxy()
    yield server
    server.close()


@pytest.fixture
def unreachable_provider(transactional_db):
    config_apply(spec=config_parse("""
providers:
  - name: behind-proxy
    kind: openai
    base_url: http://llm.upstream.invalid/v1
    api_key: sk-upstream
    models:
      proxied: up
"""))


def test_upstream_call_goes_through_the_configured_proxy(spawn_gateway, proxy, unreachable_provider,
                                                         api_key):
    url = spawn_gateway(HTTP_PROXY=f"http://127.0.0.1:{proxy.port}", NO_PROXY="localhost")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)
    answer = client.chat.completions.create(model="proxied", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "via proxy"
    assert proxy.request_lines == ["POST http://llm.upstream.invalid/v1/chat/completions HTTP/1.1"]


def test_no_proxy_exempts_the_upstream_host(spawn_gateway, proxy, unreachable_provider, api_key):
    url = spawn_gateway(HTTP_PROXY=f"http://127.0.0.1:{proxy.port}", NO_PROXY=".upstream.invalid")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as failure:
        client.chat.completions.create(model="proxied", messages=[{"role": "user", "content": "hi"}])
    assert failure.value.status_code == 502  # resolved directly, and the host does not exist
    assert proxy.request_lines == []
