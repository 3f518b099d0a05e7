"""The Codex CLI (npm `@openai/codex`, pinned in tests/clients/package.json, installed by .ci/run
with `npm ci`) in exec mode against a live gateway, with its default tools: a custom model
provider on the gateway's /v1 speaking the Responses wire API, and the scripted tool-loop
upstream behind it in each dialect (Chat Completions, Responses, Anthropic Messages).

Each run must complete the loop: the upstream asks for the shell tool (`exec_command` running
`echo hi`), Codex runs it, the tool's output reaches the upstream in the second request, and
the final answer is printed. Skipped only where node is absent."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients.loop_fixtures import MODELS, _tool_loop_server, tool_loop  # noqa: F401
from tests.clients.tool_loop_upstream import FINAL, tool_results

CODEX = Path(__file__).parent / "node_modules" / ".bin" / "codex"
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is absent")


def _codex_exec(tmp_path: Path, gateway_url: str, api_key: str, model: str) -> str:
    """Run `codex exec` once; its stdout. Fails on a non-zero exit."""
    assert CODEX.exists(), "run `npm ci` in tests/clients (the Codex CLI is not installed)"
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(f"""
model = "{model}"
model_provider = "gateway"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[model_providers.gateway]
name = "LLM gateway"
base_url = "{gateway_url}/v1"
wire_api = "responses"
env_key = "GATEWAY_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[feedback]
enabled = false
""")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(home),
           "GATEWAY_API_KEY": api_key, "NO_COLOR": "1", "RUST_LOG": "error"}
    done = subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", "-C", str(work),
                           "Run `echo hi` in the shell, then tell me what it printed."],
                          env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"codex failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _assert_loop_completed(tool_loop, provider: str, stdout: str) -> list:
    calls = tool_loop.calls(provider)
    assert len(calls) >= 2, [c.path for c in tool_loop.calls()]
    # The second upstream request carries what the shell printed.
    assert any("hi" in result for result in tool_results(calls[1].body)), calls[1].body
    assert FINAL in stdout
    return calls


def test_codex_default_config_through_a_chat_upstream(tmp_path, gateway_url, tool_loop,
                                                      api_key):
    stdout = _codex_exec(tmp_path, gateway_url, api_key, MODELS["chat"])
    calls = _assert_loop_completed(tool_loop, "loop-chat", stdout)
    first = calls[0].body
    assert calls[0].path.endswith("/chat/completions")
    names = [t["function"]["name"] for t in first["tools"]]
    # Codex's namespace group arrives flattened; its hosted web_search tool is dropped.
    assert "exec_command" in names and "multi_agent_v1__spawn_agent" in names
    assert "web_search" not in json.dumps(first["tools"])


def test_codex_default_config_through_a_responses_upstream(tmp_path, gateway_url, tool_loop,
                                                           api_key):
    stdout = _codex_exec(tmp_path, gateway_url, api_key, MODELS["responses"])
    calls = _assert_loop_completed(tool_loop, "loop-resp", stdout)
    first = calls[0].body
    assert calls[0].path.endswith("/responses")
    # Passed through: the namespace and the hosted tool as Codex sent them.
    types = [t["type"] for t in first["tools"]]
    assert "namespace" in types and "web_search" in types
    assert first["model"] == "up-resp" and first["store"] is False


def test_codex_default_config_through_an_anthropic_upstream(tmp_path, gateway_url, tool_loop,
                                                            api_key):
    stdout = _codex_exec(tmp_path, gateway_url, api_key, MODELS["anthropic"])
    calls = _assert_loop_completed(tool_loop, "loop-anth", stdout)
    assert calls[0].path.endswith("/messages")
    names = [t["name"] for t in calls[0].body["tools"]]
    assert "exec_command" in names and "multi_agent_v1__spawn_agent" in names
