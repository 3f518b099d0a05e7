"""The startup heap is frozen out of the garbage collector's scans (gateway.asgi, issue 22): once
at import, and once more after the first API requests, counted by the real ASGI handler."""
from __future__ import annotations

import gc

import httpx

from gateway import asgi


def _collectable_garbage(n: int) -> list:
    return [[i] for i in range(n)]  # lists are always tracked by the collector


def test_import_freezes_the_startup_heap():
    assert gc.get_freeze_count() > 10_000


def test_the_heap_is_frozen_again_after_the_first_api_requests(gateway_url, demo_key):
    asgi.heap_freezer.left = 3
    asgi.heap_freezer.frozen.clear()
    body = {"model": "demo", "messages": [{"role": "user", "content": "ping"}]}
    headers = {"authorization": f"Bearer {demo_key}"}
    counts = []
    with httpx.Client(base_url=gateway_url, timeout=20) as client:
        for _ in range(3):
            assert not asgi.heap_freezer.frozen.is_set()
            counts.append(gc.get_freeze_count())
            kept = _collectable_garbage(2000)  # objects the freeze must take in
            assert client.post("/v1/chat/completions", json=body,
                               headers=headers).status_code == 200
        # the handler counts a request once its response is sent: the client may see it first
        assert asgi.heap_freezer.frozen.wait(10)
        after = gc.get_freeze_count()
        assert asgi.heap_freezer.left == 0
        # a fourth request freezes nothing more
        assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    # (frozen objects that are freed leave the count: it may shrink, never grow unfrozen)
    assert counts[0] >= counts[1] >= counts[2]
    assert after >= counts[2] + len(kept)
    assert gc.get_freeze_count() <= after
