"""Finance pages under /reports/: spend and tokens by day (a chart), stacked spend over time by
team, model, key and provider, tables by day, team, key, provider and model, and by tag and end
user when `?group_by=` asks (by month instead of by day, in the charts and the table, for a
range longer than MONTHLY_AFTER_DAYS); CSV exports of each; the raw ledger streamed as CSV; budget status
with a burn-down forecast; the operations page (usage.operations). Today's view of the spend
page and the operations page update live over a WebSocket (usage.live), which renders the
same fragments as these views.

Every page is for the finance group (usage.permissions). Figures come from usage.selectors:
the tables show cents apportioned so that each column adds up to the shown total (amounts
under a cent with sub-cent precision: usage.amounts is the one formatting rule); the CSV
exports carry exact amounts (10 decimal places) that add up to the ledger's sum.
"""
from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.http import (
    HttpRequest, HttpResponse, HttpResponseBadRequest, QueryDict, StreamingHttpResponse,
)
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse

from usage.amounts import usd_display, usd_shown
from usage.burndown import budget_burndown
from usage.charts import OTHER_COLOUR, PALETTE, Series, stacked_bars
from usage.forms import REPORT_STACKS, OperationsForm, ReportForm, UsageFilterForm
from usage.operations import operations_report
from usage.permissions import finance_required, finance_required_async
from usage.selectors import (
    DIMENSIONS, LEDGER_FIELDS, UsageFilter, UsageReport, UsageRow, UsageTotals, budget_statuses,
    cents_apportioned, date_range_default, ledger_page, usage_report,
)

TABLES = (("day", "By day"), ("team", "By team"), ("key", "By key"),
          ("provider", "By provider"), ("model", "By model"))
# Tables the page adds when `?group_by=` asks (ReportForm): the same groupings as the CSV
# export's and the API's `tag` and `end_user`.
OPTIONAL_TABLES = {"tag": "By tag", "end_user": "By end user"}
SORTS = {
    "label": None, "requests": lambda t: t.requests, "errors": lambda t: t.errors,
    "input_tokens": lambda t: t.input_tokens, "output_tokens": lambda t: t.output_tokens,
    "total_tokens": lambda t: t.total_tokens, "cost": lambda t: t.cost_usd,
}
# (sort name, heading (None: the table's dimension), numeric) of each table column.
COLUMNS = (("label", None, False), ("requests", "Requests", True), ("errors", "Errors", True),
           ("input_tokens", "Input tokens", True), ("output_tokens", "Output tokens", True),
           ("total_tokens", "Total tokens", True), ("cost", "Spend (USD)", True))
TOTAL_COLUMNS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens",
                 "reasoning_tokens", "cost_usd", "cache_write_5m_tokens", "cache_write_1h_tokens",
                 "audio_input_tokens", "audio_output_tokens", "image_input_tokens",
                 "image_output_tokens")
LEDGER_PAGE_ROWS = 2000
# The stacked chart's group-by switch (`?stack=`, ReportForm); it shows the largest groups, the
# rest as "Other". Only the chosen grouping is read: each costs the report a grouping by day
# and that dimension (measured: the four at once made the full-range page about 3x slower).
STACKS = REPORT_STACKS
STACK_SERIES = 8
# A longer range is shown by month: its charts and time table then have at most a bar or row a
# month (a 24-month chart by day drew 730 bars of under a pixel), and the report reads whole
# months from the monthly rollup (measured on 24 months of 320 groups a day: the page by day
# spent 0.25 s grouping the daily rollup by day and team and 0.4 s drawing 730 x 9 bars).
MONTHLY_AFTER_DAYS = 92
BUCKET_TITLES = {"day": ("By day", "Daily spend"), "month": ("By month", "Monthly spend")}


def report_bucket(flt: UsageFilter) -> str:
    """The time grouping the spend page shows `flt`'s range in: `day`, or `month` for a range
    of more than MONTHLY_AFTER_DAYS days."""
    return "month" if (flt.end - flt.start).days + 1 > MONTHLY_AFTER_DAYS else "day"


def _buckets(flt: UsageFilter, bucket: str) -> list[date]:
    """The days (or first days of the months) of the range up to today, zeros included."""
    end = min(flt.end, date_range_default()[1])
    out, at = [], flt.start if bucket == "day" else flt.start.replace(day=1)
    while at <= end:
        out.append(at)
        at = at + timedelta(days=1) if bucket == "day" else (at + timedelta(days=32)).replace(day=1)
    return out


def _bucket_label(at: date, bucket: str) -> str:
    return at.isoformat() if bucket == "day" else at.strftime("%Y-%m")


def _sorted_rows(rows: list[UsageRow], sort: str, dimension: str) -> list[UsageRow]:
    """`sort` is a SORTS name, `-` prefixed for descending; ties keep the label order."""
    field = sort.lstrip("-")
    if field not in SORTS:
        field, sort = ("label", "label") if dimension in ("day", "month") else ("cost", "-cost")
    if SORTS[field] is not None:
        rows = sorted(rows, key=lambda r: SORTS[field](r.totals), reverse=sort.startswith("-"))
    elif sort.startswith("-"):
        rows = list(reversed(rows))
    return rows


def _formatted(t: UsageTotals) -> dict:
    return {"requests": f"{t.requests:,}", "errors": f"{t.errors:,}",
            "input_tokens": f"{t.input_tokens:,}", "output_tokens": f"{t.output_tokens:,}",
            "total_tokens": f"{t.total_tokens:,}"}


def _href(query: QueryDict, **changes: str) -> str:
    query = query.copy()
    for name, value in changes.items():
        query[name] = value
    return "?" + query.urlencode()


def _table(report: UsageReport, dimension: str, title: str, query: QueryDict,
           grand: UsageTotals) -> dict:
    """One grouping for the page: rows sorted as `sort_<dimension>` asks, cents apportioned so
    the column adds up to the shown total, and header links that toggle the sort."""
    param = f"sort_{dimension}"
    rows = _sorted_rows(report.group([dimension]), query.get(param, ""), dimension)
    current = query.get(param) or ("label" if dimension in ("day", "month") else "-cost")
    cents = cents_apportioned([r.totals.cost_usd for r in rows])
    headers = []
    for field, heading, numeric in COLUMNS:
        active = None
        if current.lstrip("-") == field:
            active = "descending" if current.startswith("-") else "ascending"
        toggled = field if active == "descending" or (active is None and not numeric) else f"-{field}"
        headers.append({"title": heading or title.removeprefix("By ").capitalize(),
                        "numeric": numeric, "active": active,
                        "href": _href(query, **{param: toggled}) + f"#by-{dimension}"})
    return {
        "dimension": dimension, "title": title, "headers": headers,
        "csv_href": reverse("usage:report_csv") + _href(query, group=dimension),
        "rows": [{"label": r.labels[dimension], "cost": usd_shown(r.totals.cost_usd, c),
                  "usd": str(r.totals.cost_usd),
                  "share": f"{r.totals.cost_usd * 100 / grand.cost_usd:.1f}%" if grand.cost_usd else "",
                  **_formatted(r.totals)}
                 for r, c in zip(rows, cents)],
        "total_cost": usd_shown(grand.cost_usd, sum(cents, Decimal(0))),
    }


def _chart(report: UsageReport, flt: UsageFilter, bucket: str) -> dict:
    """Series for the chart, per day (or month: `bucket`) of the range up to today (zeros
    included); `days` holds each one's first second."""
    by_bucket = {r.values[bucket]: r.totals for r in report.group([bucket])}
    days, cost, tokens, cost_text = [], [], [], []
    for day in _buckets(flt, bucket):
        totals = by_bucket.get(day, UsageTotals())
        days.append(int(datetime.combine(day, time.min, tzinfo=dt_timezone.utc).timestamp()))
        cost.append(float(totals.cost_usd))
        cost_text.append(usd_display(totals.cost_usd))
        tokens.append(totals.total_tokens)
    return {"days": days, "cost": cost, "tokens": tokens,
            "cost_text": cost_text}


def _stacked(report: UsageReport, flt: UsageFilter, dimension: str, bucket: str) -> dict:
    """Spend per day (or month: `bucket`) stacked by `dimension`: the largest STACK_SERIES
    groups of the range (by spend) as series, the others summed as "Other"; every day (month)
    of the range up to today. The segments are the report's exact amounts, so they add up to
    the by-day (by-month) table and each series to its row of the by-`dimension` table."""
    days = _buckets(flt, bucket)
    per_group: dict[tuple, dict] = {}
    for row in report.group([bucket, dimension]):
        key = (row.values[dimension], row.labels[dimension])
        per_group.setdefault(key, {})[row.values[bucket]] = row.totals.cost_usd
    ranked = sorted(per_group.items(), key=lambda kv: -sum(kv[1].values(), Decimal(0)))
    series = [Series(label, [by_day.get(d, Decimal(0)) for d in days],
                     colour=PALETTE[i % len(PALETTE)])
              for i, ((_, label), by_day) in enumerate(ranked[:STACK_SERIES])]
    if len(ranked) > STACK_SERIES:
        other = [sum((by_day.get(d, Decimal(0)) for _, by_day in ranked[STACK_SERIES:]), Decimal(0))
                 for d in days]
        series.append(Series(f"Other ({len(ranked) - STACK_SERIES})", other, colour=OTHER_COLOUR))
    return stacked_bars(labels=[_bucket_label(d, bucket) for d in days], series=series)


def report_context(query: QueryDict) -> tuple[int, dict]:
    """The spend page's status and context for `query` (the view and the live updates)."""
    form = ReportForm(query)
    if not form.is_valid():
        return 400, {"nav": "spend", "form": form}
    flt = form.usage_filter()
    bucket = report_bucket(flt)
    shown = ((bucket, BUCKET_TITLES[bucket][0]), *TABLES[1:],
             *((d, OPTIONAL_TABLES[d]) for d in form.group_by()))
    stack = form.stack()
    report = usage_report(flt=flt, groupings=[*((dimension,) for dimension, _ in shown),
                                              (bucket, stack)])
    grand = report.total
    tables = [_table(report, dimension, title, query, grand) for dimension, title in shown]
    return 200, {
        "nav": "spend", "form": form, "flt": flt, "grand_fmt": _formatted(grand),
        "grand_cost": tables[0]["total_cost"], "tables": tables,
        "chart": _chart(report, flt, bucket), "bucket": bucket,
        "chart_title": BUCKET_TITLES[bucket][1],
        "stacks": STACKS, "stack": stack, "stacked": _stacked(report, flt, stack, bucket),
        "stack_title": dict(STACKS)[stack],
        "ledger_days": [d.isoformat() for d in report.ledger_days], "query": query.urlencode(),
        "group_by": form.group_by(), "live": flt.end >= date_range_default()[1],
    }


def report_fragment(query: QueryDict) -> str:
    """The part of the spend page a live update replaces (templates/usage/_report_body.html)."""
    status, context = report_context(query)
    return render_to_string("usage/_report_body.html", context) if status == 200 else ""


@finance_required
def report(request: HttpRequest) -> HttpResponse:
    status, context = report_context(request.GET)
    return render(request, "usage/report.html", context, status=status)


def _csv_text(value) -> object:
    """Cells a spreadsheet would run as a formula get a leading quote (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _dimension_columns(dimension: str) -> tuple[str, ...]:
    return {"day": ("day",), "month": ("month",), "team": ("team_id", "team"), "key": ("key_id", "key"),
            "provider": ("provider",), "model": ("model",), "tag": ("tag",),
            "end_user": ("end_user",)}[dimension]


def _dimension_cells(row: UsageRow, dimension: str) -> list:
    value = row.values[dimension]
    if dimension in ("team", "key"):
        return ["" if value is None else value, _csv_text(row.labels[dimension])]
    if dimension in ("day", "month"):
        return [row.labels[dimension]]
    return [_csv_text(row.labels[dimension])]


def _totals_cells(t: UsageTotals) -> list:
    return [t.requests, t.errors, t.input_tokens, t.output_tokens, t.cached_tokens,
            t.reasoning_tokens, f"{t.cost_usd:.10f}", t.cache_write_5m_tokens,
            t.cache_write_1h_tokens, t.audio_input_tokens, t.audio_output_tokens,
            t.image_input_tokens, t.image_output_tokens]


def group_by_parse(text: str) -> tuple[str, ...] | None:
    """`day,team` -> ("day", "team") in DIMENSIONS order; None for an unknown or empty list."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in DIMENSIONS for n in names):
        return None
    return tuple(d for d in DIMENSIONS if d in names)


@finance_required
def report_csv(request: HttpRequest) -> HttpResponse:
    """`?group=day|month|team|key|provider|model|tag|end_user` (or several, comma-separated) plus
    the page's filters: one row per group with exact costs, then a `Total` row equal to the
    rows' sum (by tag, a row with several tags counts in each, so the rows may add up to more)."""
    dims = group_by_parse(request.GET.get("group", "day"))
    form = UsageFilterForm(request.GET)
    if dims is None:
        return HttpResponseBadRequest(f"group: one or more of {', '.join(DIMENSIONS)}")
    if not form.is_valid():
        return HttpResponseBadRequest(form.errors.as_text())
    flt = form.usage_filter()
    report = usage_report(flt=flt, groupings=[dims])
    rows = report.group(dims)
    if len(dims) == 1:
        rows = _sorted_rows(rows, request.GET.get(f"sort_{dims[0]}", ""), dims[0])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([c for d in dims for c in _dimension_columns(d)] + list(TOTAL_COLUMNS))
    for row in rows:
        writer.writerow([c for d in dims for c in _dimension_cells(row, d)]
                        + _totals_cells(row.totals))
    width = sum(len(_dimension_columns(d)) for d in dims)
    writer.writerow(["Total"] + [""] * (width - 1) + _totals_cells(report.total))
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="usage-by-{"-".join(dims)}-{flt.start}-{flt.end}.csv"')
    return response


class _Line:
    """A csv.writer target that hands back each formatted line instead of storing it."""

    def write(self, text: str) -> str:
        return text


def _ledger_cell(value) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(dt_timezone.utc).isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bool):
        return int(value)
    return _csv_text(value)


async def _ledger_lines(flt) -> AsyncIterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(LEDGER_FIELDS)
    after = None
    while True:
        rows: Sequence[tuple] = await sync_to_async(ledger_page)(flt=flt, after=after,
                                                                 size=LEDGER_PAGE_ROWS)
        if rows:
            yield "".join(writer.writerow([_ledger_cell(v) for v in row]) for row in rows)
            after = (rows[-1][1], rows[-1][0])
        if len(rows) < LEDGER_PAGE_ROWS:
            return


def _filter_form(query) -> UsageFilterForm:
    form = UsageFilterForm(query)
    form.is_valid()
    return form


@finance_required_async
async def ledger_csv(request: HttpRequest) -> HttpResponse:
    """Every ledger row of the range and filters, oldest first, streamed page by page (never
    held in memory), with the price version billed and its unit prices per million tokens.
    Rows written while the export runs may or may not be included."""
    form = await sync_to_async(_filter_form)(request.GET)
    if form.errors:
        return HttpResponseBadRequest(form.errors.as_text())
    flt = form.usage_filter()
    response = StreamingHttpResponse(_ledger_lines(flt), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="ledger-{flt.start}-{flt.end}.csv"'
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@finance_required
def budgets(request: HttpRequest) -> HttpResponse:
    statuses = budget_statuses()
    return render(request, "usage/budgets.html", {
        "nav": "budgets", "budgets": statuses,
        "burndowns": [budget_burndown(status=b) for b in statuses]})


def operations_context(query: QueryDict, circuits: dict) -> tuple[int, dict]:
    """The operations page's status and context (the view and the live updates); `circuits`
    comes from gateway.process_views.circuits_view (async: it may read Redis)."""
    form = OperationsForm(query)
    if not form.is_valid():
        return 400, {"nav": "operations", "form": form, "circuits": circuits}
    return 200, {"nav": "operations", "form": form, "circuits": circuits,
                 "ops": operations_report(**form.operations_filter()), "live": True,
                 "query": query.urlencode()}


def operations_fragment(query: QueryDict, circuits: dict) -> str:
    status, context = operations_context(query, circuits)
    return render_to_string("usage/_operations_body.html", context) if status == 200 else ""


@finance_required_async
async def operations(request: HttpRequest) -> HttpResponse:
    """Latency, time to first token and errors per provider and model by hour (the hourly
    rollup plus the last hours' ledger), and each process's circuit breakers."""
    from gateway.process_views import circuits_view

    circuits = await circuits_view()
    status, context = await sync_to_async(operations_context)(request.GET, circuits)
    return await sync_to_async(render)(request, "usage/operations.html", context, status=status)


@finance_required
def budgets_csv(request: HttpRequest) -> HttpResponse:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["scope", "id", "name", "period", "period_start", "period_end", "limit_usd",
                     "spent_usd", "reserved_usd", "remaining_usd"])
    for b in budget_statuses():
        writer.writerow([b.scope, b.scope_id, _csv_text(b.name), b.period,
                         b.period_start.isoformat(), b.period_end.isoformat() if b.period_end else "",
                         f"{b.limit_usd:f}", f"{b.spent_usd:f}", f"{b.reserved_usd:f}",
                         f"{b.remaining_usd:f}"])
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="budgets.csv"'
    return response
