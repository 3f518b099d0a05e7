"""Read-only JSON API for finance, under /api/usage/ (DRF).

- `GET summary?from=&to=&group_by=day,team,key,provider,model,tag,end_user` (plus the report
  filters `team`, `key`, `provider`, `model`, `tag`, `end_user`): one row per group with exact
  decimal-string costs and tokens per class, and the totals, which equal the rows' sum and the
  ledger's sum for the range (by tag, a row with several tags counts in each).
- `GET records?from=&to=…`: ledger rows, newest first, cursor-paginated (`next`/`previous`
  links; `page_size` up to 1000), each with the price version it was billed at.

Authentication: a session (signed in through the admin) or `Authorization: Token <key>` from a
token an admin issued (admin "Tokens", or `manage.py drf_create_token USER`). Permission:
usage.permissions.IsFinance. Without credentials: 401; without the right: 403.
"""
from __future__ import annotations

from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.generics import ListAPIView
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from usage.forms import UsageFilterForm
from usage.models import UsageRecord
from usage.permissions import IsFinance
from usage.pricing import TOKEN_FIELDS
from usage.selectors import DIMENSIONS, UsageRow, UsageTotals, ledger_records, usage_report
from usage.views import group_by_parse


class BaseUsageAPIView(APIView):
    """Finance-only, read-only; the token authenticator comes first so that a request without
    credentials gets 401 with `WWW-Authenticate: Token`."""

    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsFinance]
    http_method_names = ["get", "head", "options"]

    def filter_form(self, request: Request) -> UsageFilterForm:
        form = UsageFilterForm(request.query_params)
        if not form.is_valid():
            raise serializers.ValidationError(form.errors.get_json_data())
        return form


def _totals(t: UsageTotals) -> dict:
    return {"requests": t.requests, "errors": t.errors,
            **{name: getattr(t, name) for name in TOKEN_FIELDS},
            "cost_usd": f"{t.cost_usd:.10f}"}


def _row(row: UsageRow) -> dict:
    out: dict = {}
    for dimension, value in row.values.items():
        if dimension == "day":
            out["day"] = value.isoformat()
        elif dimension in ("team", "key"):
            out[f"{dimension}_id"] = value
            out[dimension] = row.labels[dimension]
        else:
            out[dimension] = value
    out.update(_totals(row.totals))
    return out


class UsageSummaryView(BaseUsageAPIView):
    def get(self, request: Request) -> Response:
        dims = group_by_parse(request.query_params.get("group_by", "day"))
        if dims is None:
            raise serializers.ValidationError(
                {"group_by": [f"a comma-separated list of {', '.join(DIMENSIONS)}"]})
        flt = self.filter_form(request).usage_filter()
        report = usage_report(flt=flt, groupings=[dims])
        return Response({
            "from": flt.start.isoformat(), "to": flt.end.isoformat(), "group_by": list(dims),
            "rows": [_row(r) for r in report.group(dims)],
            "totals": _totals(report.total),
            "ledger_days": [d.isoformat() for d in report.ledger_days],
        })


def _rate():
    return serializers.DecimalField(max_digits=14, decimal_places=6, allow_null=True)


class PriceVersionSerializer(serializers.Serializer):
    """A price version with every rate (null: falls back as usage.pricing states)."""
    id = serializers.IntegerField()
    effective_from = serializers.DateTimeField()
    input_per_mtok = serializers.DecimalField(max_digits=14, decimal_places=6)
    output_per_mtok = serializers.DecimalField(max_digits=14, decimal_places=6)
    cached_input_per_mtok = _rate()
    cache_write_5m_per_mtok = _rate()
    cache_write_1h_per_mtok = _rate()
    reasoning_per_mtok = _rate()
    audio_input_per_mtok = _rate()
    audio_output_per_mtok = _rate()
    image_input_per_mtok = _rate()
    image_output_per_mtok = _rate()
    long_context_threshold = serializers.IntegerField(allow_null=True)
    long_context_input_per_mtok = _rate()
    long_context_output_per_mtok = _rate()
    long_context_cached_input_per_mtok = _rate()
    long_context_cache_write_5m_per_mtok = _rate()
    long_context_cache_write_1h_per_mtok = _rate()


class UsageRecordSerializer(serializers.ModelSerializer):
    """A ledger row; `key_name` and `team_name` as they were when it was written."""
    key_name = serializers.SerializerMethodField()
    team_name = serializers.SerializerMethodField()
    price = PriceVersionSerializer(allow_null=True)
    tags = serializers.ListField(source="tag_list", child=serializers.CharField())

    def get_key_name(self, record: UsageRecord) -> str | None:
        return record.key_name or None

    def get_team_name(self, record: UsageRecord) -> str | None:
        return record.team_name or None

    class Meta:
        model = UsageRecord
        fields = ["id", "request_id", "client_request_id", "created_at", "api_key", "key_prefix",
                  "key_name", "team", "team_name", "surface", "public_model", "upstream_model",
                  "provider_name", "route_id", "stream", "status", "http_status", "error_type",
                  *TOKEN_FIELDS, "usage_source", "cost_usd", "price", "latency_ms", "ttft_ms",
                  "tags", "end_user"]
        read_only_fields = fields


class LedgerCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class UsageRecordListView(BaseUsageAPIView, ListAPIView):
    serializer_class = UsageRecordSerializer
    pagination_class = LedgerCursorPagination

    def get_queryset(self):
        return ledger_records(flt=self.filter_form(self.request).usage_filter())
