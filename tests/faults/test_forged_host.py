"""Two replicas, a forged Host: refused on the API and the detailed health page, never served."""
from __future__ import annotations

import httpx

from tests.faults.harness import create_api_key
from tests.faults.traffic import burst

FORGED = {"host": "evil.example.com"}


def test_a_forged_host_gets_no_200_from_any_replica(replicas, key_name):
    key = create_api_key(key_name, env=replicas.env)
    urls = replicas.start(2)
    genuine = burst(urls, key, 4)
    forged = burst(urls, key, 20, headers=FORGED)
    health = [httpx.get(f"{url}/health/detailed", headers=FORGED, timeout=10).status_code
              for url in urls for _ in range(5)]
    health_genuine = [httpx.get(f"{url}/health/detailed", timeout=10).status_code for url in urls]

    assert [a.status for a in genuine] == [200] * 4  # the key and the route work
    assert health_genuine == [200, 200]
    assert [a.status for a in forged] == [400] * 20
    assert all("invalid_host" in a.body for a in forged)
    assert health == [400] * 10
