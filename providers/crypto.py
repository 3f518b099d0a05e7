"""Provider secrets at rest: Fernet with rotation (`GATEWAY_ENCRYPTION_KEYS`, first one encrypts).

In development (DEBUG, no keys set) a key is derived from SECRET_KEY so `make run` works out of
the box; production settings refuse to start without explicit keys.
"""
import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretUnreadable(Exception):
    """The stored secret was encrypted with a key that is no longer configured."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        derived = base64.urlsafe_b64encode(hashlib.sha256(f"fernet:{secret_key}".encode()).digest())
        return MultiFernet([Fernet(derived)])
    return MultiFernet([Fernet(k.encode()) for k in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.GATEWAY_ENCRYPTION_KEYS), settings.SECRET_KEY)


def secret_encrypt(plaintext: str) -> str:
    """Encrypt with the first configured key; empty stays empty."""
    return _current().encrypt(plaintext.encode()).decode() if plaintext else ""


def secret_decrypt(token: str) -> str:
    """Decrypt with any configured key. Raises SecretUnreadable (never echoing the token)."""
    if not token:
        return ""
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable("provider secret cannot be decrypted with the configured keys") from None


def secret_rotate(token: str) -> str:
    """Re-encrypt a stored token under the first (newest) key."""
    return _current().rotate(token.encode()).decode() if token else ""


def secret_mask(plaintext: str) -> str:
    """What logs and the admin may show of a secret: its length class, never its characters."""
    return "" if not plaintext else "•" * 8
