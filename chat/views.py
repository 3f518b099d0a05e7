"""The chat page, its sign-in page, and the session history API (session-authenticated JSON;
unsafe methods need the CSRF token in `X-CSRFToken`):

- GET /chat/ and /chat/<id>/ — the page (reopens session <id>).
- GET /chat/api/sessions — the user's sessions, most recent first.
- POST /chat/api/sessions `{"title"?, "model"?}` — a new session (201).
- GET /chat/api/sessions/<id> — a session with its whole history.
- PATCH /chat/api/sessions/<id> `{"title"}` — rename. DELETE — delete with its history (204).

Another user's session is 404. The streaming endpoints are in chat.turns.

Every page sends a Content-Security-Policy that allows only this site's own scripts (no inline
script, no event-handler attributes) and images: a model's answer is sanitised before it is
rendered (DOMPurify), and even an answer that slipped through could not run script.
"""
from __future__ import annotations

import json
from functools import wraps

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.views.decorators.http import require_http_methods

from chat.models import ChatSession
from chat.selectors import chat_session_detail, chat_sessions_list, session_json
from chat.services import chat_session_create, chat_session_delete, chat_session_rename

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def with_csp(response: HttpResponse) -> HttpResponse:
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response["Referrer-Policy"] = "same-origin"
    return response


def _error(status: int, message: str, code: str) -> JsonResponse:
    return JsonResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": code}}, status=status)


def api_login_required(view):
    """401 JSON (not a redirect) for a signed-out caller of a JSON endpoint."""
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if not request.user.is_authenticated:
            return _error(401, "sign in to chat", "not_signed_in")
        return view(request, *args, **kwargs)
    return wrapped


def _json_body(request: HttpRequest) -> dict | None:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@login_required(login_url=reverse_lazy("chat:login"))
def chat_page(request: HttpRequest, session_id: int | None = None) -> HttpResponse:
    return with_csp(render(request, "chat/chat.html", {
        "chat_config": {"session_id": session_id, "username": request.user.get_username(),
                        "csrf_token": get_token(request), "page_url": reverse("chat:page"),
                        "models_url": reverse("chat:models"),
                        "sessions_url": reverse("chat:sessions")},
    }))


class ChatLoginView(auth_views.LoginView):
    template_name = "chat/login.html"
    redirect_authenticated_user = True
    next_page = reverse_lazy("chat:page")

    def render_to_response(self, context, **kwargs):
        return with_csp(super().render_to_response(context, **kwargs))


class ChatLogoutView(auth_views.LogoutView):
    next_page = reverse_lazy("chat:login")


@api_login_required
@require_http_methods(["GET", "POST"])
def sessions(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return JsonResponse({"sessions": chat_sessions_list(user_id=request.user.pk)})
    body = _json_body(request)
    if body is None:
        return _error(400, "the body must be a JSON object", "invalid_json")
    title, model = body.get("title") or "", body.get("model") or ""
    if not isinstance(title, str) or not isinstance(model, str):
        return _error(400, "`title` and `model` must be strings", "invalid_request")
    session = chat_session_create(user_id=request.user.pk, model=model, title=title)
    return JsonResponse(session_json(session), status=201)


@api_login_required
@require_http_methods(["GET", "PATCH", "DELETE"])
def session(request: HttpRequest, session_id: int) -> HttpResponse:
    user_id = request.user.pk
    try:
        if request.method == "GET":
            return JsonResponse(chat_session_detail(user_id=user_id, session_id=session_id))
        if request.method == "DELETE":
            if not chat_session_delete(user_id=user_id, session_id=session_id):
                raise ChatSession.DoesNotExist
            return HttpResponse(status=204)
        body = _json_body(request)
        title = body.get("title") if body is not None else None
        if not isinstance(title, str) or not title.strip():
            return _error(400, "`title` must be a non-empty string", "invalid_request")
        renamed = chat_session_rename(user_id=user_id, session_id=session_id, title=title)
        return JsonResponse(session_json(renamed))
    except ChatSession.DoesNotExist:
        return _error(404, "there is no such chat", "session_not_found")
