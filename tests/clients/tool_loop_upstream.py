"""A scripted fake upstream for agent loops: a real aiohttp server on loopback, in its own thread,
speaking Chat Completions (`/p/<name>/v1/chat/completions`), Responses (`.../responses`) and
Messages (`.../messages`), streamed or not.

The script is one tool loop: a request that carries no tool result is answered with a call of
the tool the test named (`tool`, with `arguments`), if the request offers it; a request that
carries a tool result is answered with FINAL, the final text. Every request is kept
(`calls`), with its path and body, for assertions on what reached the upstream.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FINAL = "All done: the command printed its greeting."
USAGE_IN, USAGE_OUT = 21, 9


@dataclass
class Received:
    provider: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool_names(body: dict[str, Any]) -> list[str]:
    names = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "namespace":
            names.extend(t.get("name") for t in tool.get("tools") or [])
        names.append(tool.get("name") or (tool.get("function") or {}).get("name"))
    return [n for n in names if n]


def tool_results(body: dict[str, Any]) -> list[str]:
    """The tool results a request carries, as text, in any of the three dialects."""
    out: list[str] = []

    def text(value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "".join(text(v.get("text") if isinstance(v, dict) else v) for v in value)
        return ""

    for item in body.get("input") or [] if isinstance(body.get("input"), list) else []:
        if isinstance(item, dict) and item.get("type") in ("function_call_output",
                                                           "custom_tool_call_output"):
            out.append(text(item.get("output")))
    for message in body.get("messages") or []:
        if message.get("role") == "tool":
            out.append(text(message.get("content")))
        elif isinstance(message.get("content"), list):
            out.extend(text(b.get("content")) for b in message["content"]
                       if isinstance(b, dict) and b.get("type") == "tool_result")
    return out


class ToolLoopUpstream:
    def __init__(self) -> None:
        self.port = _free_port()
        self.received: list[Received] = []
        self.tool = "exec_command"
        self.arguments: dict[str, Any] = {"cmd": "echo hi"}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    def base_url(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.port}/p/{provider}/v1"

    def script(self, *, tool: str, arguments: dict[str, Any]) -> None:
        self.tool, self.arguments = tool, arguments

    def reset(self) -> None:
        self.received.clear()
        self.script(tool="exec_command", arguments={"cmd": "echo hi"})

    def calls(self, provider: str | None = None) -> list[Received]:
        return [r for r in self.received if provider is None or r.provider == provider]

    def _turn(self, body: dict[str, Any]) -> tuple[str | None, str]:
        """(tool to call or None, final text)."""
        if tool_results(body) or self.tool not in _tool_names(body):
            return None, FINAL
        return self.tool, ""

    async def _record(self, request: web.Request) -> tuple[dict[str, Any], bool]:
        body = await request.json()
        self.received.append(Received(request.match_info["provider"], request.path, body,
                                      dict(request.headers)))
        return body, bool(body.get("stream"))

    @staticmethod
    async def _sse(request: web.Request, events: list[tuple[str | None, Any]]
                   ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for name, data in events:
            payload = data if isinstance(data, str) else json.dumps(data)
            await response.write((f"event: {name}\n" if name else "").encode()
                                 + f"data: {payload}\n\n".encode())
        await response.write_eof()
        return response

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, stream = await self._record(request)
        tool, text = self._turn(body)
        usage = {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT,
                 "total_tokens": USAGE_IN + USAGE_OUT}
        call = {"id": "call_loop_1", "type": "function",
                "function": {"name": tool, "arguments": json.dumps(self.arguments)}}
        finish = "tool_calls" if tool else "stop"
        base = {"id": "chatcmpl-loop", "object": "chat.completion.chunk", "created": 1,
                "model": body.get("model")}
        if not stream:
            message = {"role": "assistant", "content": text or None}
            if tool:
                message["tool_calls"] = [call]
            return web.json_response({**base, "object": "chat.completion", "usage": usage,
                                      "choices": [{"index": 0, "message": message,
                                                   "finish_reason": finish}]})
        delta = {"role": "assistant", **({"tool_calls": [{"index": 0, **call}]} if tool
                                         else {"content": text})}
        return await self._sse(request, [
            (None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}),
            (None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
            (None, {**base, "choices": [], "usage": usage}), (None, "[DONE]")])

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body, stream = await self._record(request)
        tool, text = self._turn(body)
        n = len(self.received)
        if tool:
            item = {"id": f"fc_loop_{n}", "type": "function_call", "status": "completed",
                    "call_id": f"call_loop_{n}", "name": tool,
                    "arguments": json.dumps(self.arguments)}
        else:
            item = {"id": f"msg_loop_{n}", "type": "message", "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}
        response = {"id": f"resp_upstream_{n}", "object": "response", "created_at": 1,
                    "status": "completed", "model": body.get("model"), "output": [item],
                    "previous_response_id": body.get("previous_response_id"),
                    "usage": {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT,
                              "total_tokens": USAGE_IN + USAGE_OUT,
                              "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens_details": {"reasoning_tokens": 0}}}
        if not stream:
            return web.json_response(response)
        seq = iter(range(100))

        def ev(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
            return kind, {"type": kind, "sequence_number": next(seq), **fields}
        opening = {**response, "status": "in_progress", "output": [], "usage": None}
        events = [ev("response.created", response=opening),
                  ev("response.in_progress", response=opening)]
        if tool:
            events += [ev("response.output_item.added", output_index=0,
                          item={**item, "status": "in_progress", "arguments": ""}),
                       ev("response.function_call_arguments.delta", item_id=item["id"],
                          output_index=0, delta=item["arguments"]),
                       ev("response.function_call_arguments.done", item_id=item["id"],
                          output_index=0, arguments=item["arguments"])]
        else:
            part = {"type": "output_text", "text": "", "annotations": []}
            events += [ev("response.output_item.added", output_index=0,
                          item={**item, "status": "in_progress", "content": []}),
                       ev("response.content_part.added", item_id=item["id"], output_index=0,
                          content_index=0, part=part),
                       ev("response.output_text.delta", item_id=item["id"], output_index=0,
                          content_index=0, delta=text, logprobs=[]),
                       ev("response.output_text.done", item_id=item["id"], output_index=0,
                          content_index=0, text=text, logprobs=[]),
                       ev("response.content_part.done", item_id=item["id"], output_index=0,
                          content_index=0, part={**part, "text": text})]
        events += [ev("response.output_item.done", output_index=0, item=item),
                   ev("response.completed", response=response)]
        return await self._sse(request, events)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, stream = await self._record(request)
        tool, text = self._turn(body)
        block = ({"type": "tool_use", "id": "toolu_loop_1", "name": tool,
                  "input": self.arguments} if tool else {"type": "text", "text": text})
        stop = "tool_use" if tool else "end_turn"
        usage = {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT}
        message = {"id": "msg_loop", "type": "message", "role": "assistant",
                   "model": body.get("model"), "content": [block], "stop_reason": stop,
                   "stop_sequence": None, "usage": usage}
        if not stream:
            return web.json_response(message)
        opening = {"type": "tool_use", "id": block.get("id"), "name": tool, "input": {}} \
            if tool else {"type": "text", "text": ""}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(self.arguments)} \
            if tool else {"type": "text_delta", "text": text}
        return await self._sse(request, [
            ("message_start", {"type": "message_start", "message": {
                **message, "content": [], "stop_reason": None,
                "usage": {"input_tokens": USAGE_IN, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": opening}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": USAGE_OUT}}),
            ("message_stop", {"type": "message_stop"})])

    def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/p/{provider}/v1/chat/completions", self._chat)
        app.router.add_post("/p/{provider}/v1/responses", self._responses)
        app.router.add_post("/p/{provider}/v1/messages", self._messages)
        started = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(
                web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            started.set()
            self._loop.run_forever()

        threading.Thread(target=serve, name="tool-loop-upstream", daemon=True).start()
        if not started.wait(10):
            raise RuntimeError("the tool-loop upstream did not start")

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
