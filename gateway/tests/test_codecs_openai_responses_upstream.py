"""The Responses codec's new mappings, pure: Codex's tools (namespaces flattened and restored,
custom tools as one-string functions, hosted tools dropped) and the Responses upstream side
(build_request from the IR, parse_response, the Passthrough), checked with the `openai` SDK's
own models where a client reads the result."""
from __future__ import annotations

import json

from openai.types.responses import Response

from gateway.codecs import openai_chat, openai_responses
from gateway.types import ChatResponse, CodecOptions, TextPart, ToolCallPart, Usage

NAMESPACE = {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
             "tools": [{"type": "function", "name": "spawn_agent", "parameters": {}},
                       {"type": "function", "name": "wait_agent", "parameters": {}}]}


def test_namespace_tools_are_flattened_unique_and_restored_in_output() -> None:
    long_ns = "n" * 70
    req = openai_responses.parse_request({
        "model": "m", "input": "hi",
        "tools": [{"type": "function", "name": "multi_agent_v1__spawn_agent"}, NAMESPACE,
                  {"type": "namespace", "name": long_ns,
                   "tools": [{"type": "function", "name": "go"}]}]})
    names = [t.name for t in req.tools]
    assert names[:3] == ["multi_agent_v1__spawn_agent", "multi_agent_v1__spawn_agent_2",
                         "multi_agent_v1__wait_agent"]
    assert len(names[3]) <= 64 and len(set(names)) == 4
    body = openai_responses.format_response(
        ChatResponse("x", (ToolCallPart("call_1", names[1], "{}"),
                           ToolCallPart("call_2", names[3], "{}")), "tool_use", Usage()),
        model="m", request_id="r", request=req)
    calls = Response.model_validate(body).output
    assert [(c.name, getattr(c, "namespace", None) or c.model_extra.get("namespace"))
            for c in calls] == [("spawn_agent", "multi_agent_v1"), ("go", long_ns)]


def test_hosted_tools_and_responses_only_options_are_dropped_not_refused() -> None:
    req = openai_responses.parse_request({
        "model": "m", "input": [
            {"role": "user", "content": "find it"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "item_reference", "id": "msg_0"}],
        "tools": [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["v"]},
                  {"type": "code_interpreter", "container": {"type": "auto"}},
                  {"type": "mcp", "server_label": "x"}, {"type": "image_generation"},
                  {"type": "local_shell"}],
        "tool_choice": {"type": "web_search"}, "store": True, "truncation": "auto",
        "service_tier": "flex", "text": {"verbosity": "low"}})
    assert req.tools == () and req.tool_choice is None
    assert req.dropped == (
        "tools.web_search", "tools.file_search", "tools.code_interpreter", "tools.mcp",
        "tools.image_generation", "tools.local_shell", "input.web_search_call",
        "input.item_reference", "tool_choice.web_search", "text.verbosity", "truncation",
        "service_tier")
    body = openai_chat.build_request(req, upstream_model="up", stream=False,
                                     options=CodecOptions())
    assert body == {"model": "up", "messages": [{"role": "user", "content": "find it"}]}


def test_build_request_turns_a_chat_conversation_into_responses_items() -> None:
    req = openai_chat.parse_request({
        "model": "m", "max_tokens": 40, "temperature": 0.5, "stop": ["END"],
        "tools": [{"type": "function", "function": {"name": "ls", "parameters": {
            "type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "ls"}},
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "list"},
                     {"role": "assistant", "content": "Listing.", "reasoning_content": "hmm",
                      "tool_calls": [{"id": "call_1", "type": "function",
                                      "function": {"name": "ls", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
                     {"role": "system", "content": "Answer in French."}]})
    dropped: list[str] = []
    body = openai_responses.build_request(req, upstream_model="gpt-5-codex", stream=True,
                                          options=CodecOptions(), dropped=dropped)
    assert body == {
        "model": "gpt-5-codex", "store": False, "instructions": "Be brief.",
        "max_output_tokens": 40, "temperature": 0.5, "stream": True,
        "tools": [{"type": "function", "name": "ls", "description": None,
                   "parameters": {"type": "object", "properties": {}}, "strict": False}],
        "tool_choice": {"type": "function", "name": "ls"},
        "input": [
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "list"}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Listing."}]},
            {"type": "function_call", "call_id": "call_1", "name": "ls", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "Answer in French."}]}]}
    assert dropped == ["stop", "thinking"]  # reasoning_content has no Responses form


def test_parse_response_reads_items_usage_and_stop() -> None:
    resp = openai_responses.parse_response({
        "id": "resp_1", "status": "incomplete", "model": "gpt-5",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [{"type": "reasoning", "id": "rs_1", "encrypted_content": "enc",
                    "summary": [{"type": "summary_text", "text": "thinking"}]},
                   {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                   {"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hel"}]},
                   {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch",
                    "input": "*** Begin"}],
        "usage": {"input_tokens": 10, "output_tokens": 5,
                  "input_tokens_details": {"cached_tokens": 4},
                  "output_tokens_details": {"reasoning_tokens": 2}}})
    assert resp.stop_reason == "max_tokens"
    assert resp.usage == Usage(input_tokens=10, output_tokens=5, cached_tokens=4,
                               reasoning_tokens=2)
    assert [type(p).__name__ for p in resp.content] == ["ThinkingPart", "TextPart",
                                                        "ToolCallPart"]
    assert resp.content[0].signature == "enc"
    assert json.loads(resp.content[2].arguments) == {"input": "*** Begin"}


def test_passthrough_renames_the_model_and_hands_over_the_final_response() -> None:
    finals = []
    passthrough = openai_responses.Passthrough(model="public", on_final=finals.append)
    created = {"type": "response.created", "sequence_number": 0,
               "response": {"id": "resp_1", "model": "up", "output": []}}
    assert passthrough.chunk("response.created", created) == [("response.created", created)]
    assert created["response"]["model"] == "public"
    done = {"type": "response.completed", "sequence_number": 5,
            "response": {"id": "resp_1", "model": "up", "output": [], "status": "completed"}}
    passthrough.chunk("response.completed", done)
    assert finals == [done["response"]] and finals[0]["model"] == "public"
    error, failed = passthrough.error("boom", "api_error")
    assert (error[0], failed[0]) == ("error", "response.failed")
    assert failed[1]["sequence_number"] == 7 and failed[1]["response"]["status"] == "failed"


def test_error_in_body_and_stream_done() -> None:
    assert openai_responses.error_in_body({"status": "failed", "output": [],
                                           "error": {"message": "x"}})
    assert not openai_responses.error_in_body({"status": "completed", "error": None,
                                               "output": [{"type": "message"}]})
    assert openai_responses.stream_done("response.completed", "{}")
    assert openai_responses.stream_done(None, '{"type": "response.incomplete"}')
    assert not openai_responses.stream_done("response.output_text.delta", "{}")
    assert ChatResponse("x", (TextPart("a"),), "end_turn", Usage())  # the IR type is unchanged
