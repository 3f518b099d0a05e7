"""Key expiry and rotation, read the ways a request finds a key: the lookup by digest
(providers.selectors.api_key_active_get) and the process's key cache (providers.cache)."""
from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from providers.cache import KeyCache
from providers.keys import api_key_hash
from providers.models import AuditLog
from providers.selectors import api_key_active_get
from providers.services import api_key_create, api_key_rotate

pytestmark = pytest.mark.django_db


def test_a_rotated_key_accepts_both_secrets_until_the_grace_ends():
    key, old = api_key_create(name="app")
    new = api_key_rotate(key=key, grace=timedelta(hours=2))
    ends = key.previous_key_expires_at
    assert ends is not None
    assert abs(ends - timezone.now() - timedelta(hours=2)) < timedelta(seconds=5)
    for secret, expires_at in ((old, ends), (new, None)):
        found = api_key_active_get(key_hash=api_key_hash(secret))
        assert found.id == key.id and found.expires_at == expires_at
    assert key.prefix == new[:10]


def test_a_rotated_out_secret_past_its_grace_is_not_found():
    key, old = api_key_create(name="app")
    api_key_rotate(key=key, grace=timedelta(hours=1))
    key.__class__.objects.filter(pk=key.pk).update(
        previous_key_expires_at=timezone.now() - timedelta(seconds=1))
    assert api_key_active_get(key_hash=api_key_hash(old)) is None


def test_rotating_twice_or_without_grace_retires_the_older_secrets_now():
    key, first = api_key_create(name="app")
    second = api_key_rotate(key=key, grace=timedelta(hours=1))
    third = api_key_rotate(key=key, grace=timedelta(hours=1))
    assert api_key_active_get(key_hash=api_key_hash(first)) is None
    assert api_key_active_get(key_hash=api_key_hash(second)) is not None
    api_key_rotate(key=key, grace=timedelta(0))
    assert api_key_active_get(key_hash=api_key_hash(third)) is None
    assert (key.previous_key_hash, key.previous_key_expires_at) == ("", None)
    with pytest.raises(ValueError):
        api_key_rotate(key=key, grace=timedelta(hours=-1))


@pytest.mark.django_db(transaction=True)  # the lookup reads from the database's own threads
def test_an_expired_key_is_refused_by_the_cache_that_holds_it():
    _, raw = api_key_create(name="soon", expires_at=timezone.now() + timedelta(seconds=0.3))
    digest = api_key_hash(raw)
    cache = KeyCache()

    assert asyncio.run(cache.find(digest)) is not None
    assert len(cache) == 1 and cache.lookups == 1
    time.sleep(0.35)
    assert asyncio.run(cache.find(digest)) is None  # the cached copy expires, unasked
    assert cache.lookups == 1
    assert api_key_active_get(key_hash=digest) is None


def test_a_rotation_is_audited_without_any_secret_or_digest():
    key, old = api_key_create(name="app")
    new = api_key_rotate(key=key, grace=timedelta(hours=1), actor="ops")
    row = AuditLog.objects.get(action="change")
    assert row.actor == "ops" and set(row.changes) == {"prefix", "previous_key_expires_at"}
    text = str(row.changes)
    for secret in (old, new, api_key_hash(old), api_key_hash(new)):
        assert secret not in text
