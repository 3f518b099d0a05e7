"""Fixtures of the agent-loop client tests (imported by them): the scripted tool-loop upstream
and three providers on it, one per upstream dialect, each serving its own public model:
`loop-chat` (OpenAI-compatible, Chat Completions) as `gw-chat`, `loop-resp` (OpenAI-compatible
marked `responses_api`) as `gw-resp`, `loop-anth` (Anthropic) as `gw-anth`."""
from __future__ import annotations

import pytest

from tests.clients.tool_loop_upstream import ToolLoopUpstream

MODELS = {"chat": "gw-chat", "responses": "gw-resp", "anthropic": "gw-anth"}


@pytest.fixture(scope="session")
def _tool_loop_server():
    server = ToolLoopUpstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def tool_loop(_tool_loop_server: ToolLoopUpstream, transactional_db) -> ToolLoopUpstream:
    from providers.config_file import config_parse
    from providers.services import config_apply

    _tool_loop_server.reset()
    u = _tool_loop_server
    config_apply(spec=config_parse(f"""
providers:
  - name: loop-chat
    kind: openai
    base_url: {u.base_url("loop-chat")}
    api_key: sk-loop-chat
    models:
      gw-chat: up-chat
  - name: loop-resp
    kind: openai
    base_url: {u.base_url("loop-resp")}
    api_key: sk-loop-resp
    translation:
      responses_api: true
    models:
      gw-resp: up-resp
  - name: loop-anth
    kind: anthropic
    base_url: {u.base_url("loop-anth")}
    api_key: sk-loop-anth
    models:
      gw-anth: up-anth
"""))
    return u
