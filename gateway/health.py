"""GET /health — liveness: the process answers; touches no database or network."""
from django.http import HttpRequest, HttpResponse

from gateway.responses import json_response


async def health(request: HttpRequest) -> HttpResponse:
    return json_response({"status": "ok"})
