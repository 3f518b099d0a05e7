"""Provider secrets are encrypted at rest, with key rotation."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from providers.crypto import SecretUnreadable, secret_decrypt, secret_encrypt
from providers.models import Provider
from providers.services import provider_secrets_rotate


def test_encrypts_with_first_key_and_decrypts_with_any(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.GATEWAY_ENCRYPTION_KEYS = [old]
    token = secret_encrypt("sk-secret")
    assert "sk-secret" not in token
    settings.GATEWAY_ENCRYPTION_KEYS = [new, old]
    assert secret_decrypt(token) == "sk-secret"
    settings.GATEWAY_ENCRYPTION_KEYS = [new]
    with pytest.raises(SecretUnreadable) as info:
        secret_decrypt(token)
    assert token not in str(info.value)


@pytest.mark.django_db
def test_rotation_re_encrypts_under_the_newest_key(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.GATEWAY_ENCRYPTION_KEYS = [old]
    Provider.objects.create(name="p", kind="openai", base_url="https://x.example/v1",
                            api_key_encrypted=secret_encrypt("sk-rotate-me"))
    settings.GATEWAY_ENCRYPTION_KEYS = [new, old]
    assert provider_secrets_rotate() == 1
    settings.GATEWAY_ENCRYPTION_KEYS = [new]
    assert secret_decrypt(Provider.objects.get().api_key_encrypted) == "sk-rotate-me"
