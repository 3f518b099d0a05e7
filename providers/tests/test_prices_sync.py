"""The price catalog (genai-prices, offline) and `manage.py prices_sync`: a new price version per
upstream model in use when the catalog's price differs from the one in force, with its
provenance; idempotent; an admin's price always wins; --dry-run writes nothing; the admin shows
the catalog's price beside each version and runs the same sync as an action."""
from __future__ import annotations

import io
from datetime import UTC, date, datetime
from decimal import Decimal

import genai_prices
import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from genai_prices import data_snapshot

from providers.catalog import CatalogMissing, catalog_price
from providers.models import AuditLog, ModelRoute, Price, PriceSource, Provider
from usage.tests.test_reports import make_user


@pytest.fixture
def routes(db) -> dict[str, Provider]:
    """An OpenAI provider serving gpt-4o-mini, an Anthropic one serving Claude Sonnet 4.6, a
    self-hosted OpenAI-compatible server and the mock (neither in the catalog)."""
    openai = Provider.objects.create(name="openai", kind="openai", base_url="")
    anthropic = Provider.objects.create(name="anthropic", kind="anthropic", base_url="")
    local = Provider.objects.create(name="vllm", kind="openai",
                                    base_url="http://10.0.0.7:8000/v1")
    mock = Provider.objects.create(name="mock", kind="mock", base_url="")
    ModelRoute.objects.create(public_model="mini", provider=openai, upstream_model="gpt-4o-mini")
    ModelRoute.objects.create(public_model="sonnet", provider=anthropic,
                              upstream_model="claude-sonnet-4-6")
    ModelRoute.objects.create(public_model="llama", provider=local, upstream_model="llama-3")
    ModelRoute.objects.create(public_model="demo", provider=mock, upstream_model="mock-echo")
    return {"openai": openai, "anthropic": anthropic}


def _sync(*args: str) -> str:
    out = io.StringIO()
    call_command("prices_sync", *args, stdout=out)
    return out.getvalue()


def _versions() -> list[tuple]:
    return sorted(Price.objects.values_list("provider__name", "upstream_model", "input_per_mtok",
                                            "output_per_mtok", "source"))


def test_sync_adds_one_version_per_model_in_use_and_a_second_run_adds_nothing(routes):
    first = _sync()
    versions = _versions()
    assert [(p, m, s) for p, m, _, _, s in versions] == [
        ("anthropic", "claude-sonnet-4-6", "genai-prices"),
        ("openai", "gpt-4o-mini", "genai-prices")]
    assert "openai/gpt-4o-mini: added" in first
    assert "vllm/llama-3: not in catalog" in first and "mock/mock-echo: not in catalog" in first

    second = _sync()
    assert _versions() == versions
    assert Price.objects.count() == 2
    assert "openai/gpt-4o-mini: unchanged" in second and "added" not in second


def test_each_version_records_its_provenance_and_the_catalogs_rates(routes):
    _sync()
    mini = Price.objects.get(upstream_model="gpt-4o-mini")
    # OpenAI's list price for GPT-4o mini: $0.15 in, $0.60 out, $0.075 cached, per million.
    assert (mini.input_per_mtok, mini.output_per_mtok, mini.cached_input_per_mtok) == (
        Decimal("0.15"), Decimal("0.6"), Decimal("0.075"))
    assert mini.provider == routes["openai"]
    assert (mini.source, mini.catalog_version) == (PriceSource.CATALOG, genai_prices.__version__)
    assert mini.catalog_date is None  # the catalog lists it without a date

    sonnet = Price.objects.get(upstream_model="claude-sonnet-4-6")
    assert (sonnet.source, sonnet.catalog_version) == ("genai-prices", genai_prices.__version__)
    assert sonnet.catalog_date == date(2026, 3, 13)  # the catalog's own date for these rates
    assert sonnet.cache_write_5m_per_mtok == sonnet.input_per_mtok * Decimal("1.25")
    assert sonnet.cache_write_1h_per_mtok == sonnet.input_per_mtok * 2

    logged = AuditLog.objects.filter(object_type="price", actor="prices_sync")
    assert logged.count() == 2
    assert all(entry.changes["source"] == [None, "genai-prices"] for entry in logged)


def test_an_admins_price_always_wins_over_the_catalog(routes):
    own = Price.objects.create(upstream_model="gpt-4o-mini", provider=routes["openai"],
                               input_per_mtok=Decimal("9"), output_per_mtok=Decimal("9"))
    generic = Price.objects.create(upstream_model="claude-sonnet-4-6", provider=None,
                                   input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"),
                                   source=PriceSource.CONFIG)
    out = _sync()
    assert set(Price.objects.all()) == {own, generic}
    assert "openai/gpt-4o-mini: admin price kept" in out
    assert "anthropic/claude-sonnet-4-6: admin price kept" in out


def test_a_catalog_version_whose_rates_differ_gets_a_new_version(routes):
    stale = Price.objects.create(upstream_model="gpt-4o-mini", provider=routes["openai"],
                                 input_per_mtok=Decimal("0.2"), output_per_mtok=Decimal("0.6"),
                                 source=PriceSource.CATALOG, catalog_version="0.1.0")
    out = _sync("--provider", "openai")
    assert "openai/gpt-4o-mini: added" in out and "input_per_mtok" in out
    assert "claude" not in out  # --provider: that provider's routes only
    newest = Price.objects.filter(upstream_model="gpt-4o-mini").exclude(pk=stale.pk).get()
    assert newest.input_per_mtok == Decimal("0.15")
    assert Price.objects.filter(pk=stale.pk, input_per_mtok=Decimal("0.2")).exists()
    assert "added" not in _sync("--provider", "openai")


def test_dry_run_prints_what_it_would_add_and_writes_nothing(routes):
    out = _sync("--dry-run")
    assert "openai/gpt-4o-mini: would add" in out
    assert "anthropic/claude-sonnet-4-6: would add" in out
    assert Price.objects.count() == 0
    assert AuditLog.objects.count() == 0


def test_the_catalog_is_the_bundled_data_even_if_an_update_was_fetched():
    """What UpdatePrices installs after a download (a custom snapshot) is never read."""
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[],
                                                                 from_auto_update=True))
    try:
        found = catalog_price(kind="openai", base_url="", upstream_model="gpt-4o-mini",
                              at=datetime.now(UTC))
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert found.rates["input_per_mtok"] == Decimal("0.15")
    with pytest.raises(CatalogMissing):
        catalog_price(kind="openai", base_url="https://llm.internal.example/v1",
                      upstream_model="gpt-4o-mini", at=datetime.now(UTC))


@pytest.fixture
def admin_client(routes) -> Client:
    client = Client()
    client.force_login(make_user("root", superuser=True))
    return client


def test_the_price_admin_shows_the_catalog_price_and_flags_a_difference(admin_client, routes):
    own = Price.objects.create(upstream_model="gpt-4o-mini", provider=routes["openai"],
                               input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.9"),
                               cached_input_per_mtok=Decimal("0.075"))
    page = admin_client.get(reverse("admin:providers_price_changelist")).content.decode()
    assert "Catalog (genai-prices)" in page
    assert "$0.15 / $0.6" in page
    assert '<span class="state off" title="output">differs</span>' in page

    detail = admin_client.get(reverse("admin:providers_price_change", args=[own.pk]))
    html = detail.content.decode()
    assert f"openai gpt-4o-mini in genai-prices {genai_prices.__version__}" in html
    assert "<tr><td>output</td><td>$0.9</td><td>$0.6</td>" in html


def test_the_admin_action_syncs_without_a_selection_and_keeps_the_admins_price(admin_client,
                                                                                 routes):
    own = Price.objects.create(upstream_model="gpt-4o-mini", provider=routes["openai"],
                               input_per_mtok=Decimal("9"), output_per_mtok=Decimal("9"))
    url = reverse("admin:providers_price_changelist")
    response = admin_client.post(url, {"action": "catalog_sync", "index": "0"}, follow=True)
    assert response.status_code == 200
    added = Price.objects.exclude(pk=own.pk).get()
    assert (added.upstream_model, added.source) == ("claude-sonnet-4-6", "genai-prices")
    entry = AuditLog.objects.get(object_type="price", object_id=str(added.pk))
    assert entry.actor == "root"
    assert "1 added" in response.content.decode()
    admin_client.post(url, {"action": "catalog_sync", "index": "0"})
    assert Price.objects.count() == 2
