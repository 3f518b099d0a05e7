"""`/` and the 403 page: who may use which part of the gateway, in one place.

Three places: the admin (active staff with a permission on anything it registers), the
finance reports (usage.permissions) and chat (anyone signed in). `/` sends an anonymous visitor
to sign in and everyone else to the first place they may use, in that order; the admin and
report menus and the 403 page list the same places (chat/templatetags/gateway_access.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse

from usage.permissions import user_is_finance
from sso.selectors import user_is_sso


@dataclass(frozen=True)
class Destination:
    name: str
    url: str
    what: str


def user_may_use_admin(user) -> bool:
    """What the admin itself lets in past its index: active staff with a permission on at
    least one registered app (others would see only "You don't have permission…")."""
    if not (user and user.is_authenticated and user.is_active and user.is_staff):
        return False
    return user.is_superuser or any(user.has_module_perms(model._meta.app_label)
                                    for model in admin.site._registry)


def destinations(user) -> list[Destination]:
    """The places `user` may use, the one `/` sends them to first."""
    if not (user and user.is_authenticated and user.is_active):
        return []
    places = []
    if user_may_use_admin(user):
        places.append(Destination("Admin", reverse("admin:index"),
                                  "providers, routes, prices, keys, teams and the ledger"))
    if user_is_finance(user):
        places.append(Destination("Reports", reverse("usage:report"), "spend and budgets"))
    places.append(Destination("Chat", reverse("chat:page"), "chat with the gateway's models"))
    return places


def home(request: HttpRequest) -> HttpResponse:
    """GET /: anonymous -> the sign-in page (back here after), else the first destination."""
    if not request.user.is_authenticated:
        return redirect_to_login(reverse("home"), login_url=reverse("chat:login"))
    return HttpResponseRedirect(destinations(request.user)[0].url)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403: the reason (the PermissionDenied message names the access needed), who is
    signed in, and links to what they may use instead."""
    reason = str(exception or "") or "Your account does not have access to this page."
    return render(request, "403.html", {"reason": reason,
                                        "destinations": destinations(request.user),
                                        "sso_user": user_is_sso(user=request.user)},
                  status=403)
