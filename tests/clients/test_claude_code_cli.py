"""The Claude Code CLI (npm `@anthropic-ai/claude-code`, pinned in tests/clients/package.json,
installed by .ci/run with `npm ci`) in print mode against a live gateway, under a model name it
does not know as a Claude model (`gw-model`), so it sends what it sends such models: system
turns in `messages` with the mid-conversation-system beta, adaptive thinking with an effort,
`context_management`, 1h cache breakpoints.

The fake upstream (gateway/tests/fake_upstream.py, `until_tool_result`) asks for the Bash tool
(`echo hi`) until the tool's result comes back, then answers. Each run must complete the loop:
the CLI runs the command, its output reaches the upstream in the next request, the final
answer is the CLI's result, and the ledger has a row per request. Covered: an OpenAI-compatible
upstream (translated) and an Anthropic one (passed through, the client's `anthropic-beta`
header arriving). Everything is on loopback; telemetry, error reports, update checks and other
nonessential traffic are off. Skipped only where node is absent."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from providers.config_file import config_parse
from providers.services import config_apply

CLAUDE = Path(__file__).parent / "node_modules" / ".bin" / "claude"
MODEL = "gw-model"
FINAL = "All done: the command printed hi."
BASH_CALL = {"name": "Bash", "arguments": json.dumps({"command": "echo hi",
                                                      "description": "Print hi"})}
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is absent")


def _route(fake_upstream, kind: str) -> str:
    """`gw-model` served by one provider of `kind` on the fake upstream; its name."""
    name = f"cc-{kind}"
    config_apply(spec=config_parse(f"""
providers:
  - name: {name}
    kind: {kind}
    base_url: {fake_upstream.base_url(name)}
    api_key: sk-upstream-{kind}
    models:
      {MODEL}: up-{kind}
"""))
    fake_upstream.behave(name, tool_call=BASH_CALL, until_tool_result=True, reply=FINAL)
    return name


def _claude(tmp_path: Path, gateway_url: str, api_key: str) -> dict:
    """Run `claude -p` once in a fresh HOME and working directory; its JSON result."""
    assert CLAUDE.exists(), "run `npm ci` in tests/clients (Claude Code is not installed)"
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "TERM": "dumb", "NO_COLOR": "1",
           "ANTHROPIC_BASE_URL": gateway_url, "ANTHROPIC_API_KEY": api_key,
           "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL, "ANTHROPIC_SMALL_FAST_MODEL": MODEL,
           "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
           "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_MAX_RETRIES": "0"}
    done = subprocess.run(
        [str(CLAUDE), "-p", "Run `echo hi` with the Bash tool, then tell me what it printed.",
         "--output-format", "json", "--model", MODEL, "--allowedTools", "Bash",
         "--max-turns", "4"],
        cwd=work, env=env, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"claude failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _loop(fake_upstream, provider: str) -> tuple:
    """The agent loop's last two upstream requests (of those offering the Bash tool): the one
    answered with the tool call, and the one carrying its result."""
    loop = [c for c in fake_upstream.calls(provider)
            if any((t.get("function") or t).get("name") == "Bash"
                   for t in c.body.get("tools") or [])]
    assert len(loop) >= 2, [c.body.get("messages") for c in loop]
    return loop[-2], loop[-1]


def test_claude_code_completes_a_tool_loop_through_an_openai_compatible_upstream(
        tmp_path, gateway_url, fake_upstream, api_key, ledger_rows):
    provider = _route(fake_upstream, "openai")
    result = _claude(tmp_path, gateway_url, api_key)
    assert result["is_error"] is False and FINAL in result["result"]
    first, second = _loop(fake_upstream, provider)
    assert first.path.endswith("/chat/completions")
    # Its system turns, in place as system messages.
    assert [m["role"] for m in first.body["messages"]].count("system") >= 2
    assert any(m["role"] == "tool" and "hi" in m["content"] for m in second.body["messages"])
    rows = ledger_rows(2)
    assert {r.status for r in rows} == {"ok"} and {r.public_model for r in rows} == {MODEL}


def test_claude_code_completes_a_tool_loop_through_an_anthropic_upstream_with_its_betas(
        tmp_path, gateway_url, fake_upstream, api_key, ledger_rows):
    provider = _route(fake_upstream, "anthropic")
    result = _claude(tmp_path, gateway_url, api_key)
    assert result["is_error"] is False and FINAL in result["result"]
    first, second = _loop(fake_upstream, provider)
    betas = first.headers.get("anthropic-beta", "")
    assert "claude-code-20250219" in betas, betas
    # Passed through untouched: its system turns and the fields only Anthropic takes.
    assert "system" in [m["role"] for m in first.body["messages"]]
    assert {"context_management", "output_config", "thinking"} <= set(first.body)
    results = [b for m in second.body["messages"] if isinstance(m.get("content"), list)
               for b in m["content"] if b.get("type") == "tool_result"]
    assert results and "hi" in json.dumps(results[-1]["content"])
    rows = ledger_rows(2)
    assert {r.status for r in rows} == {"ok"} and {r.public_model for r in rows} == {MODEL}
