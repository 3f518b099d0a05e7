"""The usage ledger: exactly one append-only row per proxied request."""
from django.db import models


class UsageStatus(models.TextChoices):
    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_DISCONNECTED = "client_disconnected"
    TIMEOUT = "timeout"
    REJECTED = "rejected"


class UsageSource(models.TextChoices):
    REPORTED = "reported"
    ESTIMATED = "estimated"


class UsageRecordQuerySet(models.QuerySet):
    def between(self, start, end):
        return self.filter(created_at__gte=start, created_at__lt=end)


class UsageRecord(models.Model):
    request_id = models.CharField(max_length=64, unique=True)
    # The client's own x-request-id, when it sent one (not unique: clients reuse them).
    client_request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(db_index=True)
    api_key = models.ForeignKey("providers.ApiKey", null=True, blank=True,
                                on_delete=models.SET_NULL, related_name="usage_records")
    key_prefix = models.CharField(max_length=16, blank=True)
    team = models.ForeignKey("providers.Team", null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="usage_records")
    surface = models.CharField(max_length=32)
    public_model = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, blank=True)
    provider_name = models.CharField(max_length=64, blank=True)
    route_id = models.BigIntegerField(null=True, blank=True)
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=24, choices=UsageStatus.choices)
    http_status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    usage_source = models.CharField(max_length=16, choices=UsageSource.choices,
                                    default=UsageSource.REPORTED)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    price = models.ForeignKey("providers.Price", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, blank=True)

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["team", "created_at"]),
            models.Index(fields=["provider_name", "created_at"]),
            models.Index(fields=["public_model", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.public_model} {self.status}"
