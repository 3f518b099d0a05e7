"""One module per upstream kind, behind `gateway.adapters.base.Adapter`.

Each adapter names the wire `dialect` it speaks; a surface whose client dialect differs reaches
it through the typed IR (gateway/surfaces/translated.py), so every kind serves every surface.
"""
from gateway.adapters.anthropic import AnthropicAdapter
from gateway.adapters.base import Adapter
from gateway.adapters.mock import MockAdapter
from gateway.adapters.openai import OpenAIAdapter

ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "mock": MockAdapter(),
}


def adapter_for(kind: str) -> Adapter:
    return ADAPTERS[kind]
