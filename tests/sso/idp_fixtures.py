"""A real OpenID Connect provider for the SSO tests, imported by the test modules as
tests/clients/loop_fixtures.py is: oidc_provider.mjs (panva's oidc-provider) under Debian's
node, on a free loopback port, with one client whose redirect URI is the live gateway's
/sso/callback/. Skipped where node or the npm package (tests/clients, `npm ci`) is absent."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PROVIDER_JS = HERE / "oidc_provider.mjs"
PROVIDER_PACKAGE = HERE.parent / "clients" / "node_modules" / "oidc-provider"
CLIENT_ID = "llm-gateway"
CLIENT_SECRET = "sso-client-secret-Zq8v1NfT3w"
PASSWORD = "idp-password-1"

ACCOUNTS = {
    "olga": {"sub": "sub-olga-0001", "email": "olga@example.com", "name": "Olga Ops",
             "groups": ["gateway-ops"]},
    "fay": {"sub": "sub-fay-0002", "email": "fay@example.com", "name": "Fay Finance",
            "groups": ["gateway-finance"]},
    "ned": {"sub": "sub-ned-0003", "email": "ned@example.com", "name": "Ned Nogroup",
            "groups": []},
    "ada": {"sub": "sub-ada-0004", "email": "ada@example.com", "name": "Ada Admin",
            "groups": ["gateway-admins", "gateway-finance"]},
}
GROUP_ROLES = {"gateway-admins": ("superuser",), "gateway-ops": ("operators",),
               "gateway-finance": ("finance",)}


@dataclass
class IdentityProvider:
    issuer: str
    accounts_file: Path

    def set_groups(self, username: str, groups: list[str]) -> None:
        """Change a person's groups at the IdP: the provider reads the file at each sign-in."""
        accounts = json.loads(self.accounts_file.read_text())
        accounts[username]["groups"] = groups
        self.accounts_file.write_text(json.dumps(accounts))

    def reset(self) -> None:
        self.accounts_file.write_text(json.dumps(
            {name: {**account, "password": PASSWORD} for name, account in ACCOUNTS.items()}))


@pytest.fixture(scope="session")
def _identity_provider(_live_gateway, tmp_path_factory):
    if shutil.which("node") is None or not PROVIDER_PACKAGE.exists():
        pytest.skip("node or tests/clients/node_modules/oidc-provider is absent (npm ci)")
    folder = tmp_path_factory.mktemp("idp")
    provider = IdentityProvider(issuer="", accounts_file=folder / "accounts.json")
    provider.reset()
    config = folder / "config.json"
    config.write_text(json.dumps({
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "redirect_uris": [f"{_live_gateway}/sso/callback/"],
        "accounts_file": str(provider.accounts_file)}))
    process = subprocess.Popen(["node", str(PROVIDER_JS), str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=dict(os.environ))
    try:
        # One line, printed once the provider serves.
        ready = process.stdout.readline() if select.select([process.stdout], [], [], 30)[0] else ""
        if not ready:
            raise RuntimeError(f"the OIDC provider did not start (exit status {process.poll()})")
        provider.issuer = json.loads(ready)["issuer"]
        yield provider
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def idp(_identity_provider, settings, gateway_url):
    """The provider with its default accounts, and the gateway's SSO pointed at it (discovery
    from the issuer; the group mapping of GROUP_ROLES)."""
    from sso.config import discovery_cache

    _identity_provider.reset()
    discovery_cache.clear()
    settings.GATEWAY_SSO_ISSUER = _identity_provider.issuer
    settings.GATEWAY_SSO_CLIENT_ID = CLIENT_ID
    settings.GATEWAY_SSO_CLIENT_SECRET = CLIENT_SECRET
    settings.GATEWAY_SSO_SCOPES = "openid email profile groups"
    settings.GATEWAY_SSO_GROUP_ROLES = GROUP_ROLES
    yield _identity_provider
    discovery_cache.clear()
