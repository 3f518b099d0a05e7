"""The WebSocket routes: gateway/asgi.py hands every `websocket` scope here (behind
gateway.asgi_guards). `/v1/realtime` is the one served; any other path is closed before it
is accepted (the server answers 403)."""
from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import URLRouter
from django.urls import path, re_path

from gateway.realtime.consumer import RealtimeConsumer


class NoRoute(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close()


websocket_application = URLRouter([
    path("v1/realtime", RealtimeConsumer.as_asgi()),
    re_path(r"", NoRoute.as_asgi()),
])
