from __future__ import annotations

from django.db import models
from django.utils import timezone


class StoredResponseQuerySet(models.QuerySet):
    def live(self) -> StoredResponseQuerySet:
        return self.filter(expires_at__gt=timezone.now())

    def of_key(self, key_id: int) -> StoredResponseQuerySet:
        return self.filter(api_key_id=key_id)


class StoredResponse(models.Model):
    """One answered Responses request, kept for `previous_response_id` until `expires_at`.

    `items` is the whole conversation as Responses items: the input of every earlier turn of
    the chain, each turn's output, this turn's input and output, so continuing it is one read.
    `input_count` of them are this response's input (the rest of its `response.output`).
    `upstream_id` is set when a Responses upstream answered (and stored) it itself: a chain
    continued on that provider passes `previous_response_id` through instead of the items.
    """
    id = models.CharField(primary_key=True, max_length=200)
    api_key_id = models.BigIntegerField(db_index=True)
    provider_id = models.BigIntegerField(null=True)
    upstream_id = models.CharField(max_length=200, blank=True, default="")
    model = models.CharField(max_length=200)
    items = models.JSONField(default=list)
    input_count = models.PositiveIntegerField(default=0)
    response = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    objects = StoredResponseQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["api_key_id", "expires_at"])]

    def __str__(self) -> str:
        return self.id
