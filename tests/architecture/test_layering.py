"""No package imports from a layer above its own (docs/architecture.md, "Layers").

0 core      pure or infrastructural pieces every layer may use: the IR, errors, codecs, the
            dialect registry, token estimates, the database hand-off, the shared-state helper,
            SSE, logs, settings, the pure routing policy
1 domain    providers, usage, tasks, response_store, sso: models, services, selectors,
            pricing, budgets, ledger, the OIDC sign-in backend
2 proxy     the rest of gateway/: adapters, pipeline, relay, surfaces, ASGI, health, metrics
3 apps      chat, the task endpoint, the Django admin modules, the finance reports and their
            live WebSocket, the SSO pages, the landing page and 403 page (gateway.home)
4 entry     the composition roots that wire every layer together: the ASGI application (HTTP
            and WebSocket routes), the URLconf, the Celery app
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "providers", "usage", "tasks", "chat", "response_store", "sso")
CORE = ("gateway.types", "gateway.errors", "gateway.codecs", "gateway.dialects", "gateway.tokens",
        "gateway.database", "gateway.cancellation", "gateway.shared_state", "gateway.streaming",
        "gateway.logs", "gateway.settings", "gateway.routing", "gateway.redis_client")
APPS = ("chat", "gateway.home", "tasks.views", "usage.views", "usage.api", "usage.forms",
        "usage.permissions", "usage.urls", "usage.live", "tasks.urls", "sso.views", "sso.urls",
        "sso.templatetags")
ENTRY = ("gateway.asgi", "gateway.urls", "gateway.celery")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer(module: str) -> int | None:
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if module == "gateway" or _within(module, ENTRY):  # gateway/__init__ loads the Celery app
        return 4
    if _within(module, CORE):
        return 0
    if _within(module, APPS) or module.endswith(".admin"):
        return 3
    return 2 if top == "gateway" else 1


def _modules():
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if {"tests", "migrations", "management"} & set(parts):
                continue
            yield ".".join(p for p in parts if p != "__init__"), path


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for module, path in _modules():
        own = layer(module)
        for imported in _imports(path):
            theirs = layer(imported)
            if theirs is not None and theirs > own:
                upward.append(f"{module} (layer {own}) imports {imported} (layer {theirs})")
    assert upward == []


def test_the_layer_map_knows_every_module():
    modules = [module for module, _ in _modules()]
    assert len(modules) > 60
    assert all(layer(m) is not None for m in modules)
