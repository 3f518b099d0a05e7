"""Two replicas running; a key created with `manage.py create_api_key` works on its first
requests on both, and a key revoked while both hold it is refused by both within a second, with
neither reading the key change feed meanwhile (only Redis pub/sub can tell them)."""
from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import redis

from providers.key_events import CHANNEL
from tests.faults.harness import create_api_key, manage, wait_until
from tests.faults.traffic import burst, chat_body


def test_a_fresh_key_is_served_on_its_first_requests_on_every_replica(replicas, key_name):
    # No config poll during the test: only the lookup of an unknown key can let the key in.
    urls = replicas.start(2, GATEWAY_CONFIG_POLL_S="600")
    key = create_api_key(key_name, env=replicas.env)
    first = [burst([url], key, 20, concurrency=20) for url in urls]

    assert [Counter(a.status for a in answers) for answers in first] == [Counter({200: 20})] * 2


def _status(url: str, key: str) -> int:
    return httpx.post(f"{url}/v1/chat/completions", json=chat_body(), timeout=10,
                      headers={"authorization": f"Bearer {key}"}).status_code


def _first_refusal_sent(url: str, key: str, since: float) -> float:
    """Seconds from `since` to the sending of the first request `url` refuses with 401 (one
    request at a time); the requests before it were served."""
    with httpx.Client(timeout=10) as client:
        while True:
            sent = time.monotonic()
            status = client.post(f"{url}/v1/chat/completions", json=chat_body(),
                                 headers={"authorization": f"Bearer {key}"}).status_code
            if status == 401:
                return sent - since
            assert status == 200 and sent - since < 5, (url, status)


def test_a_revoked_key_is_refused_by_every_replica_within_a_second(replicas, faults_redis,
                                                                  key_name):
    urls = replicas.start(2, GATEWAY_CONFIG_POLL_S="600")
    key = create_api_key(key_name, env=replicas.env)
    assert [_status(url, key) for url in urls] == [200, 200]  # each holds it now
    client = redis.Redis.from_url(faults_redis.url)
    try:
        wait_until(lambda: dict(client.pubsub_numsub(CHANNEL))[CHANNEL.encode()] == 2,
                   timeout=10, what="both replicas subscribed")
    finally:
        client.close()
    manage("shell", "-c", "from providers.models import ApiKey; "
           "from providers.services import api_key_revoke; "
           f"api_key_revoke(key=ApiKey.objects.get(name={key_name!r}), actor='faults')",
           env=replicas.env)
    revoked_at = time.monotonic()
    with ThreadPoolExecutor(len(urls)) as pool:
        refused = list(pool.map(lambda url: _first_refusal_sent(url, key, revoked_at), urls))
    assert max(refused) < 1.0, refused
    assert [_status(url, key) for url in urls] == [401, 401]
