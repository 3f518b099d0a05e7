"""Admin forms for API keys: the allowed-models picker (checked against the models the routes
serve now) and the rotation form (the grace period of the outgoing secret)."""
from __future__ import annotations

import re
from datetime import timedelta

from django import forms

from providers.models import ApiKey
from providers.selectors import public_models_served

# Key rotation: how long the outgoing secret keeps working unless the admin says otherwise.
ROTATION_GRACE_HOURS_DEFAULT = 24
ROTATION_GRACE_HOURS_MAX = 24 * 90


def model_names_parse(text: str) -> list[str]:
    """`gpt-4o-mini, gpt-4o` (commas, spaces or new lines; a JSON list also reads) -> the
    names, each once, in the order given."""
    names = [n.strip().strip("\"'") for n in re.split(r"[,\s]+", text.strip().strip("[]"))]
    return list(dict.fromkeys(n for n in names if n))


class ModelListField(forms.CharField):
    """Public model names as one line of text, cleaned to a sorted list. A name must be served
    by an enabled route now, or be in `kept` (already on the key: a route switched off for a
    while does not block editing the key). Unknown names: one error naming them all and the
    models served."""

    def __init__(self, *, kept: list[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.TextInput(attrs={
            "placeholder": "every model", "autocomplete": "off", "spellcheck": "false",
            "class": "vTextField"}))
        super().__init__(**kwargs)
        self.kept = kept or []

    def prepare_value(self, value):
        if isinstance(value, (list, tuple)):
            return ", ".join(value)
        return value

    def to_python(self, value) -> list[str]:
        if isinstance(value, (list, tuple)):
            return list(value)
        return model_names_parse(super().to_python(value) or "")

    def validate(self, value: list[str]) -> None:
        served = set(public_models_served())
        unknown = [n for n in value if n not in served and n not in self.kept]
        if unknown:
            listed = ", ".join(sorted(served)) or "none (add a route first)"
            raise forms.ValidationError(
                "No route serves %(unknown)s. Models served now: %(served)s.",
                code="unknown_model",
                params={"unknown": ", ".join(unknown), "served": listed})

    def clean(self, value) -> list[str]:
        return sorted(super().clean(value))


class ApiKeyForm(forms.ModelForm):
    allowed_models = ModelListField(label="Allowed models")

    class Meta:
        model = ApiKey
        # The secret's digests and prefix are set by the services, never typed.
        exclude = ["prefix", "key_hash", "previous_key_hash", "previous_key_expires_at"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["allowed_models"]
        field.kept = list(self.instance.allowed_models or []) if self.instance.pk else []
        served = public_models_served()
        field.help_text = ("Comma-separated public model names, e.g. “gpt-4o-mini, gpt-4o”. "
                           "Empty: every model. Served now: " + (", ".join(served) or "none")
                           + ".")


class KeyRotateForm(forms.Form):
    grace_hours = forms.FloatField(
        label="Old secret valid for (hours)", initial=ROTATION_GRACE_HOURS_DEFAULT,
        min_value=0, max_value=ROTATION_GRACE_HOURS_MAX,
        help_text="The current secret keeps working this long, so clients can switch; 0 stops "
                  "it now.")

    @property
    def grace(self) -> timedelta:
        return timedelta(hours=self.cleaned_data["grace_hours"])
