"""Bad input on every surface: a 4xx in the surface's own shape, no trace, no ledger row."""
from __future__ import annotations

import json
import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from usage.models import UsageRecord

SURFACES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
            "/v1/messages", "/v1/messages/count_tokens"]


def _shape_ok(path: str, response: httpx.Response) -> bool:
    data = response.json()
    if path.startswith("/v1/messages"):
        return data.get("type") == "error" and isinstance(data["error"]["message"], str)
    return isinstance(data["error"]["message"], str) and "type" in data["error"]


def _post(url: str, path: str, key: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=content, timeout=20,
                      headers={"authorization": f"Bearer {key}", "content-type": "application/json",
                               **headers})


BAD_BODIES = {
    "malformed json": b'{"model": "demo", "messages": [',
    "invalid utf-8": b'{"model": "demo\xff\xfe", "messages": []}',
    "array": b"[1, 2, 3]",
    "string": b'"just a string"',
    "number": b"42",
    "empty": b"",
    "deeply nested": b'{"model": "demo", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "huge integer": b'{"model": "demo", "max_tokens": 100000000000000000000000000, "messages": []}',
    "wrong model type": json.dumps({"model": ["demo"], "messages": [{"role": "user", "content": "x"}]}).encode(),
    "control chars in model": json.dumps({"model": "de\x00mo\x1b[31m", "messages": [
        {"role": "user", "content": "x"}], "prompt": "x", "input": "x", "max_tokens": 5}).encode(),
    "missing everything": b"{}",
    "wrong messages type": json.dumps({"model": "demo", "messages": "hello", "max_tokens": 5,
                                       "input": 5, "prompt": {"a": 1}}).encode(),
    "negative max_tokens": json.dumps({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                                       "max_tokens": -1, "max_output_tokens": -1, "prompt": "x",
                                       "input": {"x": 1}}).encode(),
}


@pytest.mark.parametrize("path", SURFACES)
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_bodies_get_a_4xx_in_the_surface_shape(gateway_url, demo_key, path, case):
    response = _post(gateway_url, path, demo_key, BAD_BODIES[case])
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:300])
    assert _shape_ok(path, response), response.text[:300]
    assert "Traceback" not in response.text and "File \"" not in response.text
    assert UsageRecord.objects.count() == 0


@pytest.mark.parametrize("path", SURFACES)
def test_oversized_body_is_refused_before_it_is_read(gateway_url, demo_key, path, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 4096
    # Announce 1 GB, send a few bytes: the answer must come without waiting for the rest.
    host, port = gateway_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {demo_key}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n"
                     '{"model": "demo"}'.encode())
        head = sock.recv(65536).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head[:200]
    body = head.split("\r\n\r\n", 1)[1]
    assert "request_too_large" in body

    def chunks():
        for _ in range(64):
            yield b" " * 1024

    chunked = httpx.post(f"{gateway_url}{path}", content=chunks(), timeout=20,
                         headers={"authorization": f"Bearer {demo_key}"})
    assert chunked.status_code == 413


def test_unknown_paths_methods_and_hosts_answer_json(gateway_url, demo_key):
    missing = httpx.post(f"{gateway_url}/v1/nope", headers={"authorization": f"Bearer {demo_key}"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "route_not_found"
    wrong_method = httpx.get(f"{gateway_url}/v1/chat/completions", headers={"authorization": f"Bearer {demo_key}"})
    assert wrong_method.status_code == 405
    evil_host = httpx.post(f"{gateway_url}/v1/chat/completions", headers={
        "host": "evil.example.com", "authorization": f"Bearer {demo_key}"}, json={"model": "demo"})
    assert evil_host.status_code == 400 and "error" in evil_host.json()
    traversal = httpx.post(f"{gateway_url}/v1/../admin/", headers={"authorization": f"Bearer {demo_key}"})
    assert traversal.status_code in (403, 404, 405)


def test_huge_header_values_are_refused_cleanly(gateway_url, demo_key):
    response = httpx.post(f"{gateway_url}/v1/chat/completions", json={"model": "demo"},
                          headers={"authorization": f"Bearer {demo_key}", "x-filler": "a" * 200_000})
    assert 400 <= response.status_code < 500


FIELDS = st.dictionaries(
    st.sampled_from(["model", "messages", "stream", "max_tokens", "max_output_tokens", "temperature",
                     "tools", "tool_choice", "input", "prompt", "system", "stop", "top_p",
                     "stream_options", "metadata", "thinking", "reasoning", "n", "x"]),
    st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                 | st.text(max_size=20) | st.just("demo"),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                     st.sampled_from(["role", "content", "type", "text", "name", "x"]), inner, max_size=3),
                 max_leaves=8),
    max_size=8)


@pytest.mark.parametrize("path", SURFACES)
def test_generated_bodies_never_cause_a_server_error(gateway_url, demo_key, path):
    client = httpx.Client(timeout=20, headers={"authorization": f"Bearer {demo_key}"})

    @hsettings(max_examples=400, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(body=FIELDS)
    def check(body):
        response = client.post(f"{gateway_url}{path}",
                               content=json.dumps(body, allow_nan=True).encode())
        assert response.status_code < 500, (body, response.text[:300])
        if response.status_code >= 400:
            assert _shape_ok(path, response)

    try:
        check()
    finally:
        client.close()
