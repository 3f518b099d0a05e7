"""Request id on every response: echoed when the client sent a sane one, generated otherwise."""
import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_for(header_value: str | None) -> str:
    """The client's id when it is short and printable, else a fresh `req_<hex>` id."""
    if header_value and _SAFE_ID.match(header_value):
        return header_value
    return f"req_{uuid.uuid4().hex}"


class RequestIdMiddleware:
    """Sets `request.request_id` and the `x-request-id` response header; async-capable."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        request.request_id = request_id_for(request.headers.get("x-request-id"))
        response = self.get_response(request)
        response["x-request-id"] = request.request_id
        return response

    async def _acall(self, request):
        request.request_id = request_id_for(request.headers.get("x-request-id"))
        response = await self.get_response(request)
        response["x-request-id"] = request.request_id
        return response
