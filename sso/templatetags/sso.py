"""`{% load sso %}{% sso_login_button %}`: the "Sign in with SSO" button of a sign-in page,
nothing while SSO is off. It carries the page's `next` (its context's, else the query's)."""
from urllib.parse import urlencode

from django import template
from django.urls import reverse

from sso.config import sso_enabled

register = template.Library()


@register.inclusion_tag("registration/sso_button.html", takes_context=True)
def sso_login_button(context) -> dict:
    if not sso_enabled():
        return {"url": ""}
    request = context.get("request")
    next_url = context.get("next") or (request.GET.get("next", "") if request else "")
    query = f"?{urlencode({'next': next_url})}" if next_url else ""
    return {"url": f"{reverse('sso:login')}{query}"}
