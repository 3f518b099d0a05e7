"""Client API keys: generation and HMAC-SHA256 hashing with a server secret (SECRET_KEY).

Rotating SECRET_KEY invalidates every client key, as it would for signed sessions.
"""
import hashlib
import hmac
import secrets

from django.conf import settings

KEY_PREFIX = "gw-"
PREFIX_LEN = 10


def api_key_generate() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def api_key_hash(raw: str) -> str:
    """Hex HMAC-SHA256 of the raw key; lookups are by this digest, never by the raw key."""
    secret = hashlib.sha256(f"api-key-hmac:{settings.SECRET_KEY}".encode()).digest()
    return hmac.new(secret, raw.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def api_key_prefix(raw: str) -> str:
    return raw[:PREFIX_LEN]
