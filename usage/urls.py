"""Finance pages (`urlpatterns`, mounted at /reports/) and the JSON API (`api_urlpatterns`,
mounted at /api/usage/)."""
from django.urls import path

from usage import api, views

app_name = "usage"

urlpatterns = [
    path("", views.report, name="report"),
    path("export.csv", views.report_csv, name="report_csv"),
    path("ledger.csv", views.ledger_csv, name="ledger_csv"),
    path("budgets/", views.budgets, name="budgets"),
    path("budgets.csv", views.budgets_csv, name="budgets_csv"),
    path("operations/", views.operations, name="operations"),
]

api_urlpatterns = [
    path("summary", api.UsageSummaryView.as_view(), name="summary"),
    path("records", api.UsageRecordListView.as_view(), name="records"),
]
