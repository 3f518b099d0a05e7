"""The report filter: one form parses `?from=&to=&team=&key=&provider=&model=&tag=&end_user=`
for the pages, the CSV exports and the JSON API alike; the operations page's filter
(`?hours=&provider=&model=`)."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from django import forms

from usage.operations import operations_choices
from usage.selectors import UsageFilter, date_range_default, filter_choices

MAX_RANGE_DAYS = 3660


class UsageFilterForm(forms.Form):
    """Bound to a query dict. Dates are UTC days, both included (default: the last 30 days);
    team and key take ids, provider and model names; each may repeat (`?team=1&team=2`); tag
    and end user take comma-separated values (`?tag=batch,eval`); the filters combine (AND
    across fields, OR within one). `usage_filter()` needs a valid form."""

    def __init__(self, data=None, **kwargs):
        super().__init__(data, **kwargs)
        start, end = date_range_default()
        choices = filter_choices()
        self.fields["from"] = forms.DateField(required=False, initial=start, label="From",
                                              widget=forms.DateInput(attrs={"type": "date"}))
        self.fields["to"] = forms.DateField(required=False, initial=end, label="To",
                                            widget=forms.DateInput(attrs={"type": "date"}))
        for name, label in (("team", "Team"), ("key", "Key"), ("provider", "Provider"),
                            ("model", "Model")):
            self.fields[name] = forms.TypedMultipleChoiceField(
                required=False, label=label, choices=choices[name],
                coerce=int if name in ("team", "key") else str,
                # A checkbox list (reports.js adds a type-to-filter box above it): no
                # ctrl-click, and every box is reachable with the keyboard.
                widget=forms.CheckboxSelectMultiple(attrs={"class": "pick"}))
        for name, label in (("tag", "Tags"), ("end_user", "End users")):
            self.fields[name] = forms.CharField(
                required=False, label=label, max_length=2000,
                help_text="comma-separated; any of them")

    def clean(self):
        data = super().clean()
        if "from" in self.errors or "to" in self.errors:
            return data
        end = data.get("to") or date_range_default()[1]
        start = data.get("from") or end - timedelta(days=29)
        if start > end:
            raise forms.ValidationError("“From” must not be after “To”.")
        if (end - start).days >= MAX_RANGE_DAYS:
            raise forms.ValidationError(f"A range is at most {MAX_RANGE_DAYS} days.")
        data["from"], data["to"] = start, end
        return data

    def usage_filter(self) -> UsageFilter:
        data = self.cleaned_data
        return UsageFilter(start=data["from"], end=data["to"],
                           team_ids=tuple(data.get("team") or ()), key_ids=tuple(data.get("key") or ()),
                           providers=tuple(data.get("provider") or ()),
                           models=tuple(data.get("model") or ()),
                           tags=_listed(data.get("tag"), lower=True),
                           end_users=_listed(data.get("end_user")))


def _listed(text: str | None, *, lower: bool = False) -> tuple[str, ...]:
    items = [item.strip() for item in (text or "").split(",")]
    return tuple(dict.fromkeys(item.lower() if lower else item for item in items if item))


# The report page's optional groupings beside its fixed tables (by day, team, key, provider and
# model): only the ledger has tags and end users, so a page that groups by one reads its whole
# range from the ledger, as the CSV export and the API do.
REPORT_GROUP_BY = (("tag", "Tag"), ("end_user", "End user"))


REPORT_STACKS = (("team", "Team"), ("model", "Model"), ("key", "Key"), ("provider", "Provider"))


class ReportForm(UsageFilterForm):
    """The report page's filter plus `?group_by=tag&group_by=end_user` (a table for each) and
    `?stack=team|model|key|provider` (the stacked chart's grouping)."""

    def __init__(self, data=None, **kwargs):
        super().__init__(data, **kwargs)
        self.fields["group_by"] = forms.MultipleChoiceField(
            required=False, label="Also group by", choices=REPORT_GROUP_BY,
            widget=forms.CheckboxSelectMultiple)
        self.fields["stack"] = forms.ChoiceField(
            required=False, label="Spend over time by", choices=REPORT_STACKS)

    def stack(self) -> str:
        """The stacked chart's grouping (default: team)."""
        return self.cleaned_data.get("stack") or REPORT_STACKS[0][0]

    def group_by(self) -> tuple[str, ...]:
        chosen = set(self.cleaned_data.get("group_by") or ())
        return tuple(name for name, _ in REPORT_GROUP_BY if name in chosen)


OPERATIONS_HOURS = ((6, "6 hours"), (24, "24 hours"), (72, "3 days"), (168, "7 days"))


class OperationsForm(forms.Form):
    """`?hours=6|24|72|168` (default 24: the hours up to the current one) and `provider` /
    `model` names, each may repeat."""

    def __init__(self, data=None, **kwargs):
        if data is not None and not data.get("hours"):
            data = data.copy()
            data["hours"] = "24"
        super().__init__(data, **kwargs)
        choices = operations_choices()
        self.fields["hours"] = forms.TypedChoiceField(
            required=False, label="Last", coerce=int, empty_value=24, initial=24,
            choices=[(str(h), label) for h, label in OPERATIONS_HOURS])
        for name, label in (("provider", "Provider"), ("model", "Model")):
            self.fields[name] = forms.MultipleChoiceField(
                required=False, label=label, choices=choices[name],
                widget=forms.CheckboxSelectMultiple(attrs={"class": "pick"}))

    def operations_filter(self) -> dict:
        data = self.cleaned_data
        end = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return {"start": end - timedelta(hours=data.get("hours") or 24), "end": end,
                "providers": tuple(data.get("provider") or ()),
                "models": tuple(data.get("model") or ())}
