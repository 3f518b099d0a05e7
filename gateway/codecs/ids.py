"""Identifiers the surfaces show to clients, derived from the gateway's request id."""
from __future__ import annotations

import uuid


def prefixed(prefix: str, request_id: str) -> str:
    """`request_id` with the dialect's id prefix ("msg_", "chatcmpl-", "resp_"), added once."""
    return request_id if request_id.startswith(prefix) else prefix + request_id


def new_tool_call_id() -> str:
    """A fresh id for a tool call whose upstream gave none (every call needs a unique one)."""
    return "call_" + uuid.uuid4().hex[:24]
