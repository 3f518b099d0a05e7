"""Who may read finance reports: one policy, used by the HTML pages and the JSON API alike.

A user may read reports when they are active and either a superuser or a staff member of the
`finance` group (created by migration usage/0002). Pages send anonymous users to the admin
sign-in (settings.LOGIN_URL) and answer 403 to everyone else; the API answers 401 without
credentials and 403 without the right.
"""
from __future__ import annotations

from functools import wraps

from asgiref.sync import sync_to_async
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

FINANCE_GROUP = "finance"  # created by migration usage/0002


def user_is_finance(user) -> bool:
    if not (user and user.is_authenticated and user.is_active):
        return False
    return user.is_superuser or (user.is_staff and user.groups.filter(name=FINANCE_GROUP).exists())


def finance_required(view):
    """Decorate a sync view: anonymous -> redirect to sign in with `next`; not finance -> 403."""
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not user_is_finance(request.user):
            raise PermissionDenied("Reports are for the finance group.")
        return view(request, *args, **kwargs)
    return wrapped


def finance_required_async(view):
    """The same policy for an `async def` view (the user is loaded with `request.auser()`)."""
    @wraps(view)
    async def wrapped(request, *args, **kwargs):
        user = await request.auser()
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not await sync_to_async(user_is_finance)(user):
            raise PermissionDenied("Reports are for the finance group.")
        return await view(request, *args, **kwargs)
    return wrapped


class IsFinance(BasePermission):
    """DRF permission: the same rule for session and token authenticated API calls."""

    message = "Usage data is for the finance group."

    def has_permission(self, request, view) -> bool:
        return user_is_finance(request.user)
