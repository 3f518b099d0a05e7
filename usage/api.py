"""Read-only JSON API for finance, under /api/usage/ (DRF).

- `GET summary?from=&to=&group_by=day,team,key,provider,model` (plus the report filters
  `team`, `key`, `provider`, `model`): one row per group with exact decimal-string costs, and
  the totals, which equal the rows' sum and the ledger's sum for the range.
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
    return {"requests": t.requests, "errors": t.errors, "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens, "cached_tokens": t.cached_tokens,
            "reasoning_tokens": t.reasoning_tokens, "cost_usd": f"{t.cost_usd:.10f}"}


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


class PriceVersionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    effective_from = serializers.DateTimeField()
    input_per_mtok = serializers.DecimalField(max_digits=14, decimal_places=6)
    output_per_mtok = serializers.DecimalField(max_digits=14, decimal_places=6)
    cached_input_per_mtok = serializers.DecimalField(max_digits=14, decimal_places=6,
                                                     allow_null=True)


class UsageRecordSerializer(serializers.ModelSerializer):
    key_name = serializers.CharField(source="api_key.name", default=None)
    team_name = serializers.CharField(source="team.name", default=None)
    price = PriceVersionSerializer(allow_null=True)

    class Meta:
        model = UsageRecord
        fields = ["id", "request_id", "client_request_id", "created_at", "api_key", "key_prefix",
                  "key_name", "team", "team_name", "surface", "public_model", "upstream_model",
                  "provider_name", "route_id", "stream", "status", "http_status", "error_type",
                  "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens",
                  "usage_source", "cost_usd", "price", "latency_ms", "ttft_ms"]
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
