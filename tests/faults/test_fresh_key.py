"""Two replicas running; a key created with `manage.py create_api_key` works on its first
requests on both."""
from __future__ import annotations

from collections import Counter

from tests.faults.harness import create_api_key
from tests.faults.traffic import burst


def test_a_fresh_key_is_served_on_its_first_requests_on_every_replica(replicas, key_name):
    # No config poll during the test: only the lookup of an unknown key can let the key in.
    urls = replicas.start(2, GATEWAY_CONFIG_POLL_S="600")
    key = create_api_key(key_name, env=replicas.env)
    first = [burst([url], key, 20, concurrency=20) for url in urls]

    assert [Counter(a.status for a in answers) for answers in first] == [Counter({200: 20})] * 2
