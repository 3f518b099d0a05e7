"""One module per upstream kind, behind `gateway.adapters.base.Adapter`."""
from gateway.adapters.base import Adapter
from gateway.adapters.mock import MockAdapter
from gateway.adapters.openai import OpenAIAdapter

ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "mock": MockAdapter(),
}


def adapter_for(kind: str) -> Adapter:
    return ADAPTERS[kind]
