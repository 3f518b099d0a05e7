"""Log formatters: plain text or one JSON object per line, both masking secrets.

The proxy never logs a raw key or an Authorization header; as a second line of defence the
formatters mask anything shaped like a client key (gw-…), an OpenAI/Anthropic key (sk-…) or a
bearer token, keeping only a short prefix.
"""
from __future__ import annotations

import logging
import re

import orjson

_SECRET = re.compile(r"\b(gw-|sk-(?:ant-)?|Bearer\s+)([A-Za-z0-9_\-]{3})[A-Za-z0-9_\-]{5,}")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def mask_secrets(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}…", text)


class MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "message", …extra fields} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return mask_secrets(orjson.dumps(data, default=str).decode())
