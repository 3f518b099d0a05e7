"""Budget shards (usage.budgets_redis): which hash tag a request's budget keys carry. Pure: no
Redis. The cluster behaviour itself is gateway/tests/test_redis_cluster.py."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from usage.budgets import BudgetLimit
from usage.budgets_redis import ALL_SHARDS, LEGACY, SHARDS, budget_shard, intent_shard

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


def _limit(scope: str, scope_id: int) -> BudgetLimit:
    return BudgetLimit(scope=scope, scope_id=scope_id, limit_usd=Decimal(1), period="day")


def test_a_team_budget_puts_its_keys_counters_in_the_teams_shard():
    team = _limit("team", 9)
    for key_id in range(1, 50):
        shard = budget_shard([_limit("key", key_id), team])
        assert shard == budget_shard([team]) == budget_shard([team, _limit("key", key_id)])
        names = shard.keys([_limit("key", key_id), team], NOW)
        assert all(f"{{{shard.tag}}}" in name for name in names)


def test_a_key_without_a_team_budget_has_its_own_shard_and_keys_spread():
    shards = {budget_shard([_limit("key", key_id)]) for key_id in range(1, 2000)}
    assert len(shards) == SHARDS  # every one of the 64 tags is used


def test_an_unbudgeted_intent_is_spread_by_request_id_a_budgeted_one_goes_with_its_budget():
    limits = [_limit("key", 5)]
    assert intent_shard("req_a", limits) == budget_shard(limits)
    assert len({intent_shard(f"req_{i}") for i in range(2000)}) == SHARDS
    assert intent_shard("req_a") in ALL_SHARDS


def test_the_previous_versions_key_names_are_kept_for_the_reaper():
    assert (LEGACY.reservations, LEGACY.expiry, LEGACY.epoch, LEGACY.intents,
            LEGACY.intent_expiry) == ("gw:budget-res", "gw:budget-res:exp", "gw:budget-epoch",
                                      "gw:intent", "gw:intent:exp")
    day = int(NOW.timestamp()) - 12 * 3600
    assert LEGACY.counter(_limit("key", 5), NOW) == f"gw:budget:key:5:day:{day}"
