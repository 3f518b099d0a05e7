"""A replica whose first request arrives while the database is down."""
from __future__ import annotations

import pytest

from tests.faults.harness import create_api_key
from tests.faults.traffic import burst


def test_a_replica_that_never_reached_the_database_answers_503_during_an_outage(
        replicas, faults_db, key_name):
    key = create_api_key(key_name, env=replicas.env)
    [url] = replicas.start(1)
    faults_db.stop()
    answers = burst([url], key, 5, stream_every=0)

    assert [a.status for a in answers] == [503] * 5
    assert all('"error"' in a.body for a in answers)
