"""Stored Responses and the Responses upstream wire, driven by real clients against a live
gateway: the official `openai` SDK (create with previous_response_id, retrieve, delete,
streaming) and the OpenAI Agents SDK (a two-turn tool loop chained by previous_response_id),
on the scripted tool-loop upstream (chat, Responses and Anthropic dialects)."""
from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import openai
import pytest

from tests.clients.loop_fixtures import MODELS, _tool_loop_server, tool_loop  # noqa: F401
from tests.clients.tool_loop_upstream import FINAL, tool_results

TOOL = {"type": "function", "name": "exec_command", "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                       "required": ["cmd"]}}


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _stored(client: openai.OpenAI, response_id: str, timeout: float = 5.0):
    """The stored response, once its write (scheduled with the answer) has landed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.responses.retrieve(response_id)
        except openai.NotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("dialect", ["chat", "anthropic"])
def test_previous_response_id_rebuilds_the_conversation_for_a_translated_upstream(
        gateway_url, tool_loop, api_key, dialect):
    client = _client(gateway_url, api_key)
    first = client.responses.create(model=MODELS[dialect], input="Say hi from the shell",
                                    tools=[TOOL])
    [call] = [i for i in first.output if i.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("exec_command", {"cmd": "echo hi"})
    second = client.responses.create(
        model=MODELS[dialect], previous_response_id=first.id, tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "hi\n"}])
    assert second.output_text == FINAL
    assert second.previous_response_id == first.id
    upstream = tool_loop.calls()[-1].body
    assert tool_results(upstream) == ["hi\n"]
    assert "Say hi from the shell" in json.dumps(upstream)  # the first turn, rebuilt

    stored = _stored(client, second.id)
    assert (stored.id, stored.output_text, stored.previous_response_id) == \
        (second.id, FINAL, first.id)
    deleted = client.responses.delete(second.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)


def test_a_key_sees_only_its_own_stored_responses(gateway_url, tool_loop, make_key):
    mine, theirs = _client(gateway_url, make_key()), _client(gateway_url, make_key())
    first = mine.responses.create(model=MODELS["chat"], input="hello")
    _stored(mine, first.id)
    with pytest.raises(openai.NotFoundError) as info:
        theirs.responses.retrieve(first.id)
    assert info.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        theirs.responses.create(model=MODELS["chat"], input="go on",
                                previous_response_id=first.id)
    assert info.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(first.id)
    assert _stored(mine, first.id).id == first.id


def test_store_false_keeps_nothing(gateway_url, tool_loop, api_key):
    client = _client(gateway_url, api_key)
    response = client.responses.create(model=MODELS["chat"], input="hello", store=False)
    assert response.store is False
    time.sleep(0.3)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODELS["chat"], input="more",
                                previous_response_id=response.id)


def test_streamed_chain_on_a_responses_upstream_passes_previous_response_id_through(
        gateway_url, tool_loop, api_key):
    client = _client(gateway_url, api_key)
    with client.responses.stream(model=MODELS["responses"], input="Say hi",
                                 tools=[TOOL]) as stream:
        first = stream.get_final_response()
    [call] = [i for i in first.output if i.type == "function_call"]
    [sent] = tool_loop.calls("loop-resp")
    assert sent.path.endswith("/v1/responses")
    assert sent.body["model"] == "up-resp" and sent.body["tools"] == [TOOL]
    assert first.model == MODELS["responses"]
    _stored(client, first.id)
    with client.responses.stream(
            model=MODELS["responses"], previous_response_id=first.id, tools=[TOOL],
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": "hi"}]) as stream:
        second = stream.get_final_response()
    assert (second.output_text, second.previous_response_id) == (FINAL, first.id)
    latest = tool_loop.calls("loop-resp")[-1].body
    # The upstream answered the first turn itself: it gets its own id and the new input only.
    assert latest["previous_response_id"] == first.id
    assert latest["input"] == [{"type": "function_call_output", "call_id": call.call_id,
                                "output": "hi"}]
    assert _stored(client, second.id).previous_response_id == first.id


def test_hosted_tools_and_encrypted_reasoning_reach_a_responses_upstream_untouched(
        gateway_url, tool_loop, api_key):
    body = {"model": MODELS["responses"], "store": False, "include": ["reasoning.encrypted_content"],
            "tools": [{"type": "web_search", "external_web_access": False}, TOOL],
            "input": [{"type": "reasoning", "id": "rs_1", "summary": [],
                       "encrypted_content": "gAAAA-opaque"},
                      {"role": "user", "content": "hi"}]}
    response = httpx.post(f"{gateway_url}/v1/responses", json=body, timeout=20,
                          headers={"authorization": f"Bearer {api_key}"})
    assert response.status_code == 200, response.text
    assert "x-gateway-dropped" not in response.headers
    assert tool_loop.calls("loop-resp")[-1].body == {**body, "model": "up-resp"}


@pytest.mark.parametrize("surface", ["chat", "messages"])
def test_chat_and_messages_clients_reach_a_responses_upstream(gateway_url, tool_loop, api_key,
                                                              surface):
    headers = {"authorization": f"Bearer {api_key}"}
    if surface == "chat":
        response = httpx.post(f"{gateway_url}/v1/chat/completions", headers=headers, timeout=20,
                              json={"model": MODELS["responses"], "max_tokens": 50,
                                    "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "hi"}]})
        assert response.json()["choices"][0]["message"]["content"] == FINAL
    else:
        response = httpx.post(f"{gateway_url}/v1/messages", headers=headers, timeout=20,
                              json={"model": MODELS["responses"], "max_tokens": 50,
                                    "system": "Be brief.",
                                    "messages": [{"role": "user", "content": "hi"}]})
        assert response.json()["content"][0]["text"] == FINAL
    assert tool_loop.calls("loop-resp")[-1].body == {
        "model": "up-resp", "store": False, "instructions": "Be brief.", "max_output_tokens": 50,
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "hi"}]}]}


def test_agents_sdk_runs_a_two_turn_tool_loop_with_previous_response_id(
        gateway_url, tool_loop, api_key, monkeypatch):
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    ran: list[str] = []

    @agents.function_tool
    def exec_command(cmd: str) -> str:
        """Run a shell command."""
        ran.append(cmd)
        return "hi"

    client = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0)
    model = agents.OpenAIResponsesModel(model=MODELS["chat"], openai_client=client)
    agent = agents.Agent(name="shell", instructions="Use the shell.", model=model,
                         tools=[exec_command])

    async def run() -> tuple[str, str]:
        first = await agents.Runner.run(agent, "Say hi from the shell")
        # The second turn of the conversation continues from the first's stored response.
        second = await agents.Runner.run(agent, "Thanks, once more",
                                         previous_response_id=first.last_response_id)
        return first.final_output, second.final_output

    first_text, second_text = asyncio.run(run())
    assert ran == ["echo hi"]
    assert first_text == FINAL and second_text == FINAL
    calls = tool_loop.calls("loop-chat")
    assert tool_results(calls[1].body) == ["hi"]
    # Turn two was sent with only previous_response_id + the new message; the gateway rebuilt it.
    assert "Say hi from the shell" in json.dumps(calls[2].body)
    assert "Thanks, once more" in json.dumps(calls[2].body)
    assert os.environ["OPENAI_AGENTS_DISABLE_TRACING"] == "1"
