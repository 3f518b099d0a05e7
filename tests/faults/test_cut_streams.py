"""Two replicas, an upstream that cuts its streams: each client gets the error event, and each
request has exactly one `upstream_error` row."""
from __future__ import annotations

import pytest

from tests.faults.harness import PROVIDER, create_api_key, wait_until
from tests.faults.traffic import burst, ledger_rows


# 4 requests per mode: under the breaker's 5 consecutive failures, so each reaches the upstream.
@pytest.mark.parametrize("mode", ["close", "reset", "eof"])
def test_a_cut_stream_ends_with_an_error_event_and_one_upstream_error_row(
        replicas, faults_db, fake_upstream, key_name, mode):
    key = create_api_key(key_name, env=replicas.env)
    urls = replicas.start(2)
    fake_upstream.behave(PROVIDER, cut_after=3, cut_mode=mode)
    answers = burst(urls, key, 4, concurrency=4, stream_every=1)

    assert [a.status for a in answers] == [200] * 4  # the stream had started
    assert [len(a.error_events()) for a in answers] == [1] * 4
    assert [a.events()[-1] for a in answers] == ["[DONE]"] * 4
    rows = wait_until(lambda: (r := ledger_rows(faults_db, key_name)) and len(r) >= 4 and r,
                      timeout=10, what="4 ledger rows")
    assert sorted((request_id, status) for request_id, status, _ in rows) == \
        sorted((a.request_id, "upstream_error") for a in answers)
