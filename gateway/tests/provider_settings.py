"""Changing a fake provider's settings under a running gateway, as an admin's edit does."""
from __future__ import annotations


def provider_translation_set(name: str, **settings) -> None:
    """Give provider `name` these translation settings; running servers reload them."""
    from django.db import transaction

    from providers.models import Provider
    from providers.services import config_version_bump
    from providers.translation import translation_problem

    assert translation_problem(settings) is None, translation_problem(settings)
    Provider.objects.filter(name=name).update(translation=settings)
    with transaction.atomic():
        config_version_bump()
