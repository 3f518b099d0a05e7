"""A fake OpenAI Realtime upstream: a real aiohttp WebSocket server on loopback, in its own
thread, speaking the Realtime API's event names.

`GET /p/<provider>/v1/realtime?model=…` (OpenAI's path), or Azure OpenAI's
`/p/<provider>/openai/realtime?api-version=…&deployment=…` and `/p/<provider>/openai/v1/realtime
?model=…`, answers `session.created` (naming the model or deployment), then: `session.update` ->
`session.updated`; `conversation.item.create` -> `conversation.item.created`;
`response.create` -> the scenario named by `response.instructions` (`scenario:<name>`):

- `text`     response.created, two response.output_text.delta, response.output_text.done,
             response.done with USAGE["text"]
- `function` response.created, response.function_call_arguments.delta and .done,
             response.done with USAGE["function"]
- `audio`    response.created, AUDIO_CHUNKS response.output_audio.delta (random base64),
             response.output_audio.done, response.done with USAGE["audio"]
- `hang`     response.created and one text delta, then waits: `response.cancel` ->
             response.done (status cancelled) with USAGE["cancelled"]
- `drop`     response.created and one text delta, then the socket is closed abnormally (1011)
- `invalid`  an `error` event naming the response.create's event_id (no response)

A response.create without a scenario answers `audio` when the session's output modalities
include audio, else `text`.

Server VAD (providers in `server_vad`): the session starts as OpenAI's does, GA-shaped,
`{"type": "realtime", "output_modalities": ["audio"], "audio": {"input": {"turn_detection":
{"type": "server_vad", …, "create_response": true}}}}`; `session.update` merges
`output_modalities` and `audio.input.turn_detection` into it and `session.updated` answers the
whole session. `input_audio_buffer.append` whose audio is SPEECH_STOP (the tests' marker for
the end of speech) -> input_audio_buffer.speech_stopped, input_audio_buffer.committed,
conversation.item.created, and, when the turn detection has `create_response` on, a response
the fake creates itself (`auto_responses` counts them). `input_audio_buffer.commit` ->
committed and item.created, never a response.

Every frame received and sent is kept as the raw text (`received`, `sent`), so tests can
compare bytes; `closed` is set when the client's socket is gone; `refuse[provider]` refuses
that provider's handshakes with an HTTP status; `admit[provider]`, a predicate on the
handshake's request, refuses it with 401 when false (Azure's `api-key` / bearer check).
"""
from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
from collections.abc import Callable

import orjson
from aiohttp import WSMsgType, web

from gateway.tests.loopback import serve_in_thread

AUDIO_CHUNKS = 3
SPEECH_STOP = base64.b64encode(b"fake-speech-stopped").decode()
VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
       "silence_duration_ms": 500, "create_response": True, "interrupt_response": True}

USAGE = {
    "text": {"total_tokens": 160, "input_tokens": 120, "output_tokens": 40,
             "input_token_details": {"cached_tokens": 64, "text_tokens": 120, "audio_tokens": 0,
                                     "cached_tokens_details": {"text_tokens": 64,
                                                               "audio_tokens": 0}},
             "output_token_details": {"text_tokens": 40, "audio_tokens": 0}},
    "function": {"total_tokens": 230, "input_tokens": 200, "output_tokens": 30,
                 "input_token_details": {"cached_tokens": 0, "text_tokens": 200,
                                         "audio_tokens": 0},
                 "output_token_details": {"text_tokens": 30, "audio_tokens": 0}},
    "audio": {"total_tokens": 1000, "input_tokens": 700, "output_tokens": 300,
              "input_token_details": {"cached_tokens": 128, "text_tokens": 200,
                                      "audio_tokens": 500,
                                      "cached_tokens_details": {"text_tokens": 100,
                                                                "audio_tokens": 28}},
              "output_token_details": {"text_tokens": 50, "audio_tokens": 250}},
    "cancelled": {"total_tokens": 58, "input_tokens": 50, "output_tokens": 8,
                  "input_token_details": {"cached_tokens": 0, "text_tokens": 50,
                                          "audio_tokens": 0},
                  "output_token_details": {"text_tokens": 8, "audio_tokens": 0}},
}


class FakeRealtime:
    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reset()

    def reset(self) -> None:
        self.received: list[str] = []
        self.sent: list[str] = []
        self.handshakes: list[dict] = []
        self.closed = threading.Event()
        # provider -> the HTTP status its handshake is refused with
        self.refuse: dict[str, int] = {}
        # provider -> whether a handshake's request is authorised (else 401)
        self.admit: dict[str, Callable[[web.Request], bool]] = {}
        # providers whose sessions start with server VAD (module docstring)
        self.server_vad: set[str] = set()
        self.auto_responses = 0
        self._counter = 0

    def base_url(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.port}/p/{provider}/v1"

    def azure_base_url(self, provider: str) -> str:
        """An Azure OpenAI resource's endpoint (the gateway appends `/openai/...`)."""
        return f"http://127.0.0.1:{self.port}/p/{provider}"

    def wait_closed(self, timeout: float = 5.0) -> bool:
        return self.closed.wait(timeout)

    def received_types(self) -> list[str]:
        return [orjson.loads(frame).get("type") for frame in self.received]

    def _id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter:04d}"

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        self.handshakes.append({"path": request.path, "query": dict(request.query),
                                "headers": dict(request.headers)})
        if (status := self.refuse.get(request.match_info["provider"])) is not None:
            return web.json_response({"error": {"message": "refused"}}, status=status)
        admit = self.admit.get(request.match_info["provider"])
        if admit is not None and not admit(request):
            return web.json_response({"error": {"code": "401", "message": "Access denied"}},
                                     status=401)
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)

        async def send(event: dict) -> None:
            event.setdefault("event_id", self._id("event"))
            frame = orjson.dumps(event).decode()
            self.sent.append(frame)
            await ws.send_str(frame)

        session = {"id": self._id("sess"), "model": request.query.get("model")
                   or request.query.get("deployment")}
        if request.match_info["provider"] in self.server_vad:
            session.update({"type": "realtime", "object": "realtime.session",
                            "output_modalities": ["audio"],
                            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                                "turn_detection": dict(VAD)}}})
        await send({"type": "session.created", "session": session})
        waiting: dict | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                self.received.append(msg.data)
                event = orjson.loads(msg.data)
                kind = event.get("type")
                if kind == "session.update" and "audio" in session:
                    update = event.get("session") or {}
                    if "output_modalities" in update:
                        session["output_modalities"] = update["output_modalities"]
                    given = (update.get("audio") or {}).get("input") or {}
                    if "turn_detection" in given:
                        session["audio"]["input"]["turn_detection"] = given["turn_detection"]
                    await send({"type": "session.updated", "session": session})
                elif kind == "session.update":
                    await send({"type": "session.updated", "session": event.get("session", {})})
                elif kind in ("input_audio_buffer.append", "input_audio_buffer.commit"):
                    if kind == "input_audio_buffer.append" and event.get("audio") != SPEECH_STOP:
                        continue
                    item = self._id("item")
                    if kind == "input_audio_buffer.append":
                        await send({"type": "input_audio_buffer.speech_stopped",
                                    "audio_end_ms": 1200, "item_id": item})
                    await send({"type": "input_audio_buffer.committed", "previous_item_id": None,
                                "item_id": item})
                    await send({"type": "conversation.item.created", "item": {
                        "id": item, "type": "message", "role": "user",
                        "content": [{"type": "input_audio", "transcript": None}]}})
                    detection = ((session.get("audio") or {}).get("input") or {}).get(
                        "turn_detection")
                    if kind == "input_audio_buffer.append" and detection and \
                            detection.get("create_response", True):
                        self.auto_responses += 1
                        waiting = await self._respond(ws, send, {}, session)
                elif kind == "conversation.item.create":
                    await send({"type": "conversation.item.created",
                                "item": {**event.get("item", {}), "id": self._id("item")}})
                elif kind == "response.cancel" and waiting is not None:
                    await send(self._done(waiting, "cancelled", "cancelled"))
                    waiting = None
                elif kind == "response.create":
                    waiting = await self._respond(ws, send, event, session)
                    if waiting == "dropped":
                        return ws
        finally:
            self.closed.set()
        return ws

    def _done(self, response: dict, scenario: str, status: str = "completed") -> dict:
        return {"type": "response.done",
                "response": {**response, "status": status, "usage": USAGE[scenario]}}

    async def _respond(self, ws, send, event: dict, session: dict):
        scenario = (event.get("response") or {}).get("instructions", "").removeprefix("scenario:")
        if not scenario:
            modalities = (event.get("response") or {}).get("output_modalities") \
                or session.get("output_modalities") or ["text"]
            scenario = "audio" if "audio" in modalities else "text"
        if scenario == "invalid":
            await send({"type": "error", "error": {
                "type": "invalid_request_error", "code": "invalid_value",
                "message": "invalid response", "param": None, "event_id": event.get("event_id")}})
            return None
        response = {"object": "realtime.response", "id": self._id("resp"), "output": []}
        await send({"type": "response.created", "response": {**response, "status": "in_progress"}})
        ids = {"response_id": response["id"], "item_id": self._id("item"), "output_index": 0,
               "content_index": 0}
        if scenario == "function":
            await send({"type": "response.function_call_arguments.delta", **ids,
                        "call_id": "call_1", "delta": '{"city":'})
            await send({"type": "response.function_call_arguments.done", **ids,
                        "call_id": "call_1", "name": "get_weather",
                        "arguments": '{"city":"Paris"}'})
        elif scenario == "audio":
            for _ in range(AUDIO_CHUNKS):
                await send({"type": "response.output_audio.delta", **ids,
                            "delta": base64.b64encode(os.urandom(4800)).decode()})
            await send({"type": "response.output_audio.done", **ids})
        else:
            await send({"type": "response.output_text.delta", **ids, "delta": "Hello"})
            if scenario == "hang":
                return response
            if scenario == "drop":
                await asyncio.sleep(0.05)
                await ws.close(code=1011, message=b"upstream failure")
                return "dropped"
            await send({"type": "response.output_text.delta", **ids, "delta": " world"})
            await send({"type": "response.output_text.done", **ids, "text": "Hello world"})
        await send(self._done(response, scenario))
        return None

    def start(self) -> None:
        app = web.Application()
        app.router.add_get("/p/{provider}/v1/realtime", self._realtime)
        app.router.add_get("/p/{provider}/openai/realtime", self._realtime)
        app.router.add_get("/p/{provider}/openai/v1/realtime", self._realtime)
        self.port, self._loop = serve_in_thread(app, name="fake-realtime")


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
