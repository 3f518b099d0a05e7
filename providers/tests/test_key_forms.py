"""The allowed-models picker of the key form: names as typed, checked against served models."""
from __future__ import annotations

import pytest

from providers.forms import ApiKeyForm, model_names_parse
from providers.models import ModelRoute, Provider

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("text, names", [
    ("gpt-4o-mini, gpt-4o", ["gpt-4o-mini", "gpt-4o"]),
    ("gpt-4o\ngpt-4o  claude", ["gpt-4o", "claude"]),
    ('["gpt-4o", "claude"]', ["gpt-4o", "claude"]),
    ("[]", []), ("  ", []),
])
def test_model_names_are_read_as_typed(text, names):
    assert model_names_parse(text) == names


def _form(allowed: str, instance=None) -> ApiKeyForm:
    return ApiKeyForm(data={"name": "app", "allowed_models": allowed, "budget_period": "month"},
                      instance=instance)


def test_only_served_models_or_ones_already_on_the_key_are_accepted():
    provider = Provider.objects.create(name="p", kind="mock")
    ModelRoute.objects.create(public_model="gpt-4o", provider=provider, upstream_model="x")
    ModelRoute.objects.create(public_model="gpt-4o-mini", provider=provider, upstream_model="x")
    ModelRoute.objects.create(public_model="off", provider=provider, upstream_model="x",
                              enabled=False)
    form = _form("gpt-4o-mini, gpt-4o")
    assert form.is_valid(), form.errors
    assert form.cleaned_data["allowed_models"] == ["gpt-4o", "gpt-4o-mini"]

    form = _form("gpt-4o, nope, off")
    assert not form.is_valid()
    assert form.errors["allowed_models"] == [
        "No route serves nope, off. Models served now: gpt-4o, gpt-4o-mini."]

    key = form.instance
    key.allowed_models, key.prefix, key.key_hash = ["off"], "gw-x", "h"
    key.save()
    assert _form("off, gpt-4o", instance=key).is_valid()
