"""Attribution and immutable history: a request's tags and end user reach its ledger row and can
be filtered and grouped in reports, CSV and the API; the row keeps its key's and team's names
as they were; a key, team or price version with usage cannot be deleted."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import anthropic
import openai
import pytest
from django.db.models import ProtectedError
from django.test import RequestFactory

from gateway.intake import attribution
from providers.models import ApiKey, Price, Team
from providers.services import api_key_create
from usage.models import UsageRecord
from usage.selectors import LEDGER_FIELDS, UsageFilter, ledger_page, usage_report
from usage.services import LedgerEntry, usage_record_write
from usage.tests.test_api_usage import token_client
from usage.tests.test_reports import csv_rows, make_user, signed_in


def _read(body: dict, tags_header: str | None = None) -> dict:
    headers = {"HTTP_X_GATEWAY_TAGS": tags_header} if tags_header is not None else {}
    return attribution(RequestFactory().post("/v1/chat/completions", **headers), body)


def test_tags_come_from_the_header_and_the_body_bounded_in_count_and_length():
    got = _read({"metadata": {"tags": ["Eval", "nightly", 7, "x" * 100]}},
                " batch , eval,,nightly ")
    assert got == {"tags": ("batch", "eval", "nightly", "x" * 64), "end_user": ""}
    many = _read({}, ",".join(f"t{i}" for i in range(30)))
    assert many["tags"] == tuple(f"t{i}" for i in range(10))
    assert _read({"metadata": {"tags": "a,b"}})["tags"] == ("a", "b")
    assert _read({"metadata": "nonsense"}) == {"tags": (), "end_user": ""}


def test_the_end_user_is_openais_user_or_anthropics_metadata_user_id():
    assert _read({"user": "alice"})["end_user"] == "alice"
    assert _read({"metadata": {"user_id": "bob"}})["end_user"] == "bob"
    assert _read({"user": "alice", "metadata": {"user_id": "bob"}})["end_user"] == "alice"
    assert _read({"user": 5})["end_user"] == ""
    assert len(_read({"user": "u" * 1000})["end_user"]) == 256


def test_a_live_request_records_its_tags_end_user_and_names(gateway_url, fake_provider,
                                                           ledger_rows):
    key, secret = api_key_create(name="ci-bot", team="platform")
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0,
                           default_headers={"x-gateway-tags": "nightly,Eval"})
    client.chat.completions.create(model="gpt-test", user="alice",
                                   messages=[{"role": "user", "content": "hi"}])
    [row] = ledger_rows(1)
    assert (row.tags, row.end_user, row.key_name, row.team_name) == (
        "nightly,eval", "alice", "ci-bot", "platform")


def test_a_live_anthropic_request_records_metadata_user_id(gateway_url, fake_anthropic_provider,
                                                          ledger_rows):
    _, secret = api_key_create(name="claude-user")
    client = anthropic.Anthropic(base_url=gateway_url, api_key=secret, max_retries=0)
    client.messages.create(model="claude-test", max_tokens=16, metadata={"user_id": "user-42"},
                           messages=[{"role": "user", "content": "hi"}])
    [row] = ledger_rows(1)
    assert row.end_user == "user-42"


def test_body_tags_are_read_by_the_gateway_and_never_sent_upstream(
        gateway_url, fake_upstream, fake_provider, fake_anthropic_provider, ledger_rows):
    """`metadata.tags` is the gateway's own: an upstream of the client's wire format gets the
    rest of `metadata` (Anthropic's refuses unknown keys), and the row gets the tags."""
    _, secret = api_key_create(name="tagger")
    anthropic.Anthropic(base_url=gateway_url, api_key=secret, max_retries=0).messages.create(
        model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "user-7", "tags": ["nightly"]})
    openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0) \
        .chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                 extra_body={"metadata": {"tags": "eval"}})
    [anthropic_call] = fake_upstream.calls("fake-anth")
    [openai_call] = fake_upstream.calls("fake-a")
    assert anthropic_call.body["metadata"] == {"user_id": "user-7"}
    assert "metadata" not in openai_call.body
    rows = sorted(ledger_rows(2), key=lambda r: r.surface)
    assert [(r.surface, r.tags) for r in rows] == [("anthropic.messages", "nightly"),
                                                   ("openai.chat", "eval")]


def _write(n: int, *, key: ApiKey, at: datetime, tags: str = "", end_user: str = "",
           cost: str = "0.5") -> None:
    usage_record_write(entry=LedgerEntry(
        request_id=f"attr-{n}", client_request_id="", created_at=at, api_key_id=key.id,
        key_prefix=key.prefix, key_name=key.name, team_id=key.team_id,
        team_name=key.team.name if key.team_id else "", surface="openai.chat",
        public_model="m", upstream_model="m", provider_name="p", route_id=None, stream=False,
        status="ok", http_status=200, error_type="", input_tokens=10, output_tokens=5,
        cached_tokens=0, reasoning_tokens=0, usage_source="reported", cost_usd=Decimal(cost),
        price_id=None, latency_ms=1, ttft_ms=None, tags=tags, end_user=end_user))


@pytest.fixture
def tagged_ledger(db):
    key, _ = api_key_create(name="old-name", team="red")
    now = datetime.now(timezone.utc).replace(hour=12)
    _write(1, key=key, at=now - timedelta(days=5), tags="batch,eval", end_user="alice")
    _write(2, key=key, at=now - timedelta(days=5), tags="batch", end_user="bob")
    _write(3, key=key, at=now, end_user="alice")
    ApiKey.objects.filter(pk=key.pk).update(name="new-name")
    key.refresh_from_db()
    _write(4, key=key, at=now, tags="eval")
    return {"key": key, "start": (now - timedelta(days=6)).date(), "end": now.date()}


def test_reports_group_by_tag_and_end_user_and_filter_by_them(tagged_ledger):
    flt = UsageFilter(start=tagged_ledger["start"], end=tagged_ledger["end"])
    report = usage_report(flt=flt, groupings=[("tag",), ("end_user",), ("key",)])
    assert {r.labels["tag"]: r.totals.requests for r in report.group(["tag"])} == {
        "batch": 2, "eval": 2, "(no tag)": 1}
    assert {r.labels["end_user"]: str(r.totals.cost_usd) for r in report.group(["end_user"])} == {
        "alice": "1.0000000000", "bob": "0.5000000000", "(none)": "0.5000000000"}
    assert report.total.requests == 4
    # Names as they were: the key's spend before its rename stays under its old name.
    prefix = tagged_ledger["key"].prefix
    assert {r.labels["key"]: r.totals.requests for r in report.group(["key"])} == {
        f"new-name ({prefix}…)": 1, f"old-name ({prefix}…)": 3}

    eval_only = usage_report(flt=UsageFilter(start=flt.start, end=flt.end, tags=("EVAL",)),
                             groupings=[("end_user",)])
    assert eval_only.total.requests == 2
    alice = usage_report(flt=UsageFilter(start=flt.start, end=flt.end, end_users=("alice",)),
                         groupings=[()])
    assert alice.total.requests == 2


def test_csv_and_api_filter_and_group_by_tag_and_end_user(tagged_ledger):
    span = f"from={tagged_ledger['start']}&to={tagged_ledger['end']}"
    client = signed_in(make_user("fin", finance=True))
    rows = csv_rows(client.get(f"/reports/export.csv?group=tag&{span}"))
    assert {r["tag"]: r["requests"] for r in rows} == {"batch": "2", "eval": "2", "(no tag)": "1",
                                                       "Total": "4"}
    rows = csv_rows(client.get(f"/reports/export.csv?group=end_user&{span}&tag=batch"))
    assert {r["end_user"]: r["requests"] for r in rows} == {"alice": "1", "bob": "1", "Total": "2"}
    # The raw ledger export's pages (its view streams them; tests/test_reports reads it live).
    ledger = [dict(zip(LEDGER_FIELDS, row)) for row in ledger_page(flt=UsageFilter(
        start=tagged_ledger["start"], end=tagged_ledger["end"], end_users=("alice",)))]
    assert [(r["request_id"], r["tags"], r["key_name"]) for r in ledger] == [
        ("attr-1", "batch,eval", "old-name"), ("attr-3", "", "old-name")]

    api = token_client(make_user("fin2", finance=True))
    body = api.get(f"/api/usage/summary?{span}&group_by=tag,end_user&tag=eval").json()
    # Rows tagged eval, grouped by each of their tags (attr-1 is tagged batch too).
    assert {(r["tag"], r["end_user"], r["requests"]) for r in body["rows"]} == {
        ("batch", "alice", 1), ("eval", "alice", 1), ("eval", None, 1)}
    assert body["totals"]["requests"] == 2
    records = api.get(f"/api/usage/records?{span}&tag=batch").json()["results"]
    assert sorted(r["request_id"] for r in records) == ["attr-1", "attr-2"]
    assert {tuple(r["tags"]) for r in records} == {("batch", "eval"), ("batch",)}


def _page_table(html: str, dimension: str) -> dict[str, str]:
    """{label: requests} of one table of the report page."""
    import re
    section = html.split(f'id="by-{dimension}"', 1)[1].split("</section>", 1)[0]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return {label: requests for label, requests in re.findall(
        r"<tr>\s*<td>(.*?)</td>\s*<td class=\"num\">(.*?)</td>", body)}


def test_the_report_page_groups_by_tag_and_end_user_when_asked(tagged_ledger):
    span = {"from": tagged_ledger["start"], "to": tagged_ledger["end"]}
    client = signed_in(make_user("fin", finance=True))
    plain = client.get("/reports/", span)
    assert plain.status_code == 200
    html = plain.content.decode()
    assert 'name="group_by"' in html
    assert 'id="by-tag"' not in html and 'id="by-end_user"' not in html

    page = client.get("/reports/", {**span, "group_by": ["tag", "end_user"]})
    assert page.status_code == 200
    html = page.content.decode()
    # The same groups as the selector's (and so the CSV's and the API's).
    report = usage_report(flt=UsageFilter(start=span["from"], end=span["to"]),
                          groupings=[("tag",), ("end_user",)])
    for dimension in ("tag", "end_user"):
        assert _page_table(html, dimension) == {
            r.labels[dimension]: f"{r.totals.requests:,}" for r in report.group([dimension])}
    assert _page_table(html, "tag") == {"batch": "2", "eval": "2", "(no tag)": "1"}
    assert _page_table(html, "end_user") == {"alice": "2", "bob": "1", "(none)": "1"}
    assert 'id="by-tag-note"' in html

    # Grouping combines with the filters; only end users asked: no tag table.
    page = client.get("/reports/", {**span, "group_by": "end_user", "tag": "batch"})
    html = page.content.decode()
    assert _page_table(html, "end_user") == {"alice": "1", "bob": "1"}
    assert 'id="by-tag"' not in html
    assert client.get("/reports/", {**span, "group_by": "colour"}).status_code == 400


def test_a_key_team_or_price_with_usage_cannot_be_deleted(tagged_ledger):
    key = tagged_ledger["key"]
    with pytest.raises(ProtectedError):
        key.delete()
    with pytest.raises(ProtectedError):
        Team.objects.get(pk=key.team_id).delete()
    price = Price.objects.create(upstream_model="m", input_per_mtok=1, output_per_mtok=1)
    UsageRecord.objects.filter(request_id="attr-4").update(price=price)
    with pytest.raises(ProtectedError):
        price.delete()
    unused, _ = api_key_create(name="never-used")
    unused.delete()  # a key without usage still can be
