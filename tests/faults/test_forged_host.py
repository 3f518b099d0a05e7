"""Two replicas, a forged Host: refused on the API, the detailed health page and the metrics,
never served."""
from __future__ import annotations

import httpx

from tests.faults.harness import MODEL, create_api_key
from tests.faults.traffic import burst

FORGED = {"host": "evil.example.com"}


def test_a_forged_host_gets_no_200_from_any_replica(replicas, key_name):
    key = create_api_key(key_name, env=replicas.env)
    urls = replicas.start(2)
    genuine = burst(urls, key, 4)
    forged = burst(urls, key, 20, headers=FORGED)
    auth = {"authorization": f"Bearer {key}"}
    pages = [httpx.get(f"{url}{path}", headers={**FORGED, **auth}, timeout=10).status_code
             for url in urls for path in ("/health/detailed", "/metrics", "/v1/models")
             for _ in range(3)]
    messages = [httpx.post(f"{url}/v1/messages", headers={**FORGED, **auth}, timeout=10,
                           json={"model": MODEL, "max_tokens": 5,
                                 "messages": [{"role": "user", "content": "hi"}]}).status_code
                for url in urls for _ in range(3)]
    genuine_pages = [httpx.get(f"{url}{path}", headers=auth, timeout=10).status_code
                     for url in urls for path in ("/health/detailed", "/metrics", "/v1/models")]

    assert [a.status for a in genuine] == [200] * 4  # the key and the route work
    assert genuine_pages == [200] * 6
    assert [a.status for a in forged] == [400] * 20
    assert all("invalid_host" in a.body for a in forged)
    assert pages == [400] * 18
    assert messages == [400] * 6
