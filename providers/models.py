"""Routing configuration: providers, the public model map, prices, teams and API keys.

The admin and `gateway_apply` edit these same tables; every write goes through
`providers.services`, which bumps `ConfigVersion` (routes, providers, prices: running servers
reload their routing snapshot within ~1 s) or writes a `KeyChange` (keys and teams: servers drop
those keys from their caches).
"""
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from gateway.dialects import kind_choices
from providers.validation import webhook_url_validate


class ProviderQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)


class Provider(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=32, choices=kind_choices)
    base_url = models.URLField("base URL", max_length=500, blank=True)
    # Fernet token (providers.crypto); never shown after saving.
    api_key_encrypted = models.TextField(blank=True, default="")
    weight = models.PositiveIntegerField(default=1)
    priority = models.IntegerField(default=0, help_text="Lower is tried first.")
    enabled = models.BooleanField(default=True)
    timeout_s = models.FloatField("timeout (s)", default=600, validators=[MinValueValidator(0.1)],
                                  help_text="Seconds to wait for the upstream's answer.")
    max_inflight = models.PositiveIntegerField(
        "max. requests in flight", default=512,
        help_text="Concurrent upstream requests; beyond it, the next deployment is tried.")
    breaker_failures = models.PositiveIntegerField(
        "circuit breaker: failures", default=5, validators=[MinValueValidator(1)],
        help_text="Consecutive failures that open a route's circuit.")
    breaker_cooldown_s = models.FloatField(
        "circuit breaker: cool-down (s)", default=30, validators=[MinValueValidator(0.1)],
        help_text="Seconds an open circuit waits before one probe; doubles after a failed probe.")
    extra_headers = models.JSONField(
        default=dict, blank=True,
        help_text='Headers sent with every upstream request, as JSON: {"OpenAI-Organization": '
                  '"org-…"}. Values are secrets: masked in the audit log and exports.')
    translation = models.JSONField(
        default=dict, blank=True,
        help_text='How requests translated for this provider are built: {"allow_images": true, '
                  '"allow_documents": false, "thinking_effort_map": {"1024": "low", "4000": '
                  '"medium", "8000": "high"}, "max_tokens_field": "max_tokens", '
                  '"replay_reasoning_content": false}. Empty: defaults for the kind.')
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProviderQuerySet.as_manager()

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)


class ModelRouteQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True, provider__enabled=True)


class ModelRoute(models.Model):
    """One deployment: a public model name served by a provider's upstream model."""

    public_model = models.CharField(max_length=200, db_index=True)
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="routes")
    upstream_model = models.CharField(max_length=200)
    # None: inherit the provider's weight / priority.
    weight = models.PositiveIntegerField(null=True, blank=True)
    priority = models.IntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    # None: the provider's translation setting, else what is known of the upstream model, else
    # the default (providers.capabilities resolves them once per snapshot).
    reasoning = models.BooleanField(
        "reasons", null=True, blank=True,
        help_text="Whether the upstream model takes reasoning effort (thinking budgets map to "
                  "reasoning_effort). Unknown: the provider's setting, else what is known of the "
                  "upstream model, else the kind's default.")
    max_output_tokens = models.PositiveIntegerField(
        "output limit (tokens)", null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="The most output tokens the upstream model returns; a larger max_tokens is "
                  "lowered to it. Empty: the provider's setting, else what is known of the "
                  "upstream model, else no limit.")
    responses_api = models.BooleanField(
        "Responses API", null=True, blank=True,
        help_text="Reach this OpenAI-compatible route through /v1/responses (yes) or Chat "
                  "Completions (no). Unknown: as its provider does.")

    objects = ModelRouteQuerySet.as_manager()

    class Meta:
        ordering = ["public_model", "provider__name"]
        constraints = [
            models.UniqueConstraint(fields=["public_model", "provider"], name="uniq_route_per_provider"),
        ]

    def __str__(self) -> str:
        return f"{self.public_model} -> {self.provider.name}/{self.upstream_model}"

    @property
    def effective_weight(self) -> int:
        return self.provider.weight if self.weight is None else self.weight

    @property
    def effective_priority(self) -> int:
        return self.provider.priority if self.priority is None else self.priority


class PriceSource(models.TextChoices):
    ADMIN = "admin", "admin"
    CONFIG = "config", "routing file"
    CATALOG = "genai-prices", "catalog (genai-prices)"


def _rate(help_text: str, *, required: bool = False) -> models.DecimalField:
    return models.DecimalField(max_digits=14, decimal_places=6, null=not required,
                               blank=not required, help_text=help_text,
                               validators=[MinValueValidator(Decimal("0"))])


class Price(models.Model):
    """USD per million tokens for an upstream model, versioned by `effective_from`.

    Rows are never edited in place: a new price is a new row; the one in force is the newest
    whose `effective_from` has passed (a provider-specific row beats a generic one). Each
    token class has its own rate; a null rate falls back as its help text says
    (usage.pricing). With `long_context_threshold`, a request whose input tokens
    (cache reads and writes included) exceed it is billed wholly at the `long_context_*` rates.
    """

    upstream_model = models.CharField(max_length=200)
    provider = models.ForeignKey(Provider, null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="prices")
    input_per_mtok = _rate("Uncached input.", required=True)
    output_per_mtok = _rate("Output, reasoning included.", required=True)
    cached_input_per_mtok = _rate("Cache reads. Empty: the input rate.")
    cache_write_5m_per_mtok = _rate(
        "Cache writes kept 5 minutes (Anthropic: 1.25 x input). Empty: the input rate.")
    cache_write_1h_per_mtok = _rate(
        "Cache writes kept 1 hour (Anthropic: 2 x input). Empty: the input rate.")
    reasoning_per_mtok = _rate("Reasoning output. Empty: the output rate.")
    audio_input_per_mtok = _rate("Audio input. Empty: the input rate.")
    audio_output_per_mtok = _rate("Audio output. Empty: the output rate.")
    image_input_per_mtok = _rate("Image input. Empty: the input rate.")
    image_output_per_mtok = _rate("Image output. Empty: the output rate.")
    long_context_threshold = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Input tokens above which the whole request is billed at the long-context "
                  "rates. Empty: one tier.")
    long_context_input_per_mtok = _rate("Long context: input. Empty: the input rate.")
    long_context_output_per_mtok = _rate(
        "Long context: output and reasoning. Empty: the output rate.")
    long_context_cached_input_per_mtok = _rate(
        "Long context: cache reads. Empty: the long-context input rate.")
    long_context_cache_write_5m_per_mtok = _rate(
        "Long context: 5-minute cache writes. Empty: the long-context input rate.")
    long_context_cache_write_1h_per_mtok = _rate(
        "Long context: 1-hour cache writes. Empty: the long-context input rate.")
    effective_from = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    # Provenance, set by whoever writes the row (providers.services), never by a form.
    source = models.CharField(
        max_length=32, choices=PriceSource.choices, default=PriceSource.ADMIN, editable=False,
        help_text="Who entered this version: an admin (the admin or the routing file) or the "
                  "price catalog. A price an admin entered is never replaced by the catalog.")
    catalog_version = models.CharField(
        max_length=32, blank=True, default="", editable=False,
        help_text="The catalog's version (the genai-prices package) this version came from.")
    catalog_date = models.DateField(
        null=True, blank=True, editable=False,
        help_text="The catalog's own date for these rates: the day from which it lists them. "
                  "Empty: the catalog lists them without a date.")

    class Meta:
        ordering = ["upstream_model", "-effective_from"]
        indexes = [models.Index(fields=["upstream_model", "effective_from"])]

    def __str__(self) -> str:
        scope = self.provider.name if self.provider_id else "any provider"
        return f"{self.upstream_model} ({scope}) from {self.effective_from:%Y-%m-%d}"


# Price's optional rates and long-context tier, in the order PriceInfo carries them.
PRICE_OPTIONAL_FIELDS = (
    "cached_input_per_mtok", "cache_write_5m_per_mtok", "cache_write_1h_per_mtok",
    "reasoning_per_mtok", "audio_input_per_mtok", "audio_output_per_mtok",
    "image_input_per_mtok", "image_output_per_mtok", "long_context_threshold",
    "long_context_input_per_mtok", "long_context_output_per_mtok",
    "long_context_cached_input_per_mtok", "long_context_cache_write_5m_per_mtok",
    "long_context_cache_write_1h_per_mtok",
)


class BudgetPeriod(models.TextChoices):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TOTAL = "total"


def _alert_pct_validators() -> list:
    return [MinValueValidator(1), MaxValueValidator(100)]


def _budget_checks(prefix: str) -> list[models.CheckConstraint]:
    """A budget is >= 0 and an alert threshold 1..100 %, or unset (migration 0006 repairs the
    rows stored before these checks)."""
    return [
        models.CheckConstraint(
            condition=models.Q(budget_usd__isnull=True) | models.Q(budget_usd__gte=0),
            name=f"{prefix}_budget_not_negative",
            violation_error_message="A budget cannot be negative."),
        models.CheckConstraint(
            condition=models.Q(budget_alert_pct__isnull=True)
            | models.Q(budget_alert_pct__gte=1, budget_alert_pct__lte=100),
            name=f"{prefix}_alert_pct_1_to_100",
            violation_error_message="An alert threshold is between 1 and 100 %."),
    ]


class Team(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    budget_usd = models.DecimalField("budget (USD)", max_digits=14, decimal_places=6, null=True,
                                     blank=True, validators=[MinValueValidator(Decimal("0"))])
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices,
                                     default=BudgetPeriod.MONTH)
    budget_alert_pct = models.PositiveSmallIntegerField(
        "budget alert (%)", null=True, blank=True, validators=_alert_pct_validators(),
        help_text="Send an alert when this % of the budget is spent (1-100).")
    alert_webhook_url = models.URLField(max_length=500, blank=True,
                                        validators=[webhook_url_validate],
                                        help_text="POSTed a JSON alert when a budget threshold is crossed.")
    alert_email = models.EmailField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = _budget_checks("team")

    def __str__(self) -> str:
        return self.name


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked=False)


class ApiKey(models.Model):
    """A client key. Only an HMAC-SHA256 of the secret is stored; `prefix` identifies it."""

    name = models.CharField(max_length=100)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.PROTECT,
                             related_name="api_keys")
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    # Empty list: every public model.
    allowed_models = models.JSONField(default=list, blank=True)
    expires_at = models.DateTimeField(
        "expires", null=True, blank=True,
        help_text="From this time on the key is refused (401). Empty: it never expires.")
    # After a rotation, the previous secret's digest, accepted until `previous_key_expires_at`.
    previous_key_hash = models.CharField(max_length=64, blank=True, default="", db_index=True)
    previous_key_expires_at = models.DateTimeField(
        "previous secret valid until", null=True, blank=True)
    budget_usd = models.DecimalField("budget (USD)", max_digits=14, decimal_places=6, null=True,
                                     blank=True, validators=[MinValueValidator(Decimal("0"))])
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices,
                                     default=BudgetPeriod.MONTH)
    budget_alert_pct = models.PositiveSmallIntegerField(
        "budget alert (%)", null=True, blank=True, validators=_alert_pct_validators(),
        help_text="Send an alert when this % of the budget is spent (1-100).")
    rpm_limit = models.PositiveIntegerField("requests per minute", null=True, blank=True,
                                            help_text="Empty: no limit.")
    tpm_limit = models.PositiveIntegerField("tokens per minute", null=True, blank=True,
                                            help_text="Empty: no limit.")
    max_tokens_default = models.PositiveIntegerField(
        "default max. tokens", null=True, blank=True,
        help_text="Output cap for requests that send none (also what the budget reserves).")
    revoked = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = _budget_checks("apikey")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class ConfigVersion(models.Model):
    """A single row whose token changes on every config write; servers poll it."""

    token = models.CharField(max_length=32)
    updated_at = models.DateTimeField(auto_now=True)


class AuditAction(models.TextChoices):
    ADD = "add"
    CHANGE = "change"
    DELETE = "delete"


class AuditLog(models.Model):
    """One change to the routing configuration: who, when, what changed.

    `changes` maps each changed field to `[old, new]`; secret fields are never stored, only the
    marker "changed" (`providers.services.audit_log_write` masks them). `actor` is the admin username, or the command
    that made the change (e.g. "gateway_apply"). Rows are written, never edited.
    """

    at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=8, choices=AuditAction.choices)
    object_type = models.CharField(max_length=32, db_index=True)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=300)
    changes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type} {self.object_repr}"


class KeyChange(models.Model):
    """One change of API keys, for the processes that cache keys by digest (providers.cache):
    the digests whose cached copy is stale (a key created, edited, revoked or rotated: its
    secrets' digests before and after), or every key of `team_id` (a team's budget changed).
    Servers read the rows after the last one they saw on every config poll, the fallback for
    Redis pub/sub (providers.key_events); rows older than GATEWAY_KEY_FEED_RETENTION_S are
    pruned as new ones are written."""

    digests = models.JSONField(default=list, blank=True)
    # No foreign key: the row outlives nothing it names and must not block a team's deletion.
    team_id = models.BigIntegerField(null=True, blank=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"key change {self.pk} at {self.at:%Y-%m-%d %H:%M:%S}"
