"""The usage ledger: exactly one append-only row per proxied request."""
from django.db import models


class UsageStatus(models.TextChoices):
    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_DISCONNECTED = "client_disconnected"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    # The serving process died mid-request: written by the reaper (usage.intents) from the
    # request's intent, billed at its prompt estimate.
    LOST = "lost"


class UsageSource(models.TextChoices):
    REPORTED = "reported"
    ESTIMATED = "estimated"


class UsageRecordQuerySet(models.QuerySet):
    def between(self, start, end):
        return self.filter(created_at__gte=start, created_at__lt=end)

    def after(self, created_at, pk):
        """Rows after the position (created_at, id) in (created_at, id) order."""
        return self.filter(models.Q(created_at__gt=created_at) | models.Q(created_at=created_at, pk__gt=pk))


class UsageRecord(models.Model):
    # On MySQL, MariaDB and TiDB the table is partitioned by month of created_at (migration
    # 0006, usage.partitions): there its keys are (id, created_at) and (request_id,
    # created_at), it holds no foreign keys, and LedgerRequest keeps request_id unique.
    request_id = models.CharField(max_length=64, unique=True)
    # The client's own x-request-id, when it sent one (not unique: clients reuse them).
    client_request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(db_index=True)
    # PROTECT: a key or team with usage is revoked, never deleted; its names as they were
    # when the request came are kept beside the ids, so a rename does not rewrite history.
    api_key = models.ForeignKey("providers.ApiKey", null=True, blank=True,
                                on_delete=models.PROTECT, related_name="usage_records")
    key_prefix = models.CharField(max_length=16, blank=True)
    key_name = models.CharField(max_length=100, blank=True)
    team = models.ForeignKey("providers.Team", null=True, blank=True, on_delete=models.PROTECT,
                             related_name="usage_records")
    team_name = models.CharField(max_length=64, blank=True)
    surface = models.CharField(max_length=32)
    public_model = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, blank=True)
    provider_name = models.CharField(max_length=64, blank=True)
    route_id = models.BigIntegerField(null=True, blank=True)
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=24, choices=UsageStatus.choices)
    http_status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    # Tokens per class, counted as the IR counts them (usage.pricing): `input_tokens` includes
    # the cache reads (`cached_tokens`), both cache writes and the audio and image input;
    # `output_tokens` includes the reasoning and the audio and image output.
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cache_write_5m_tokens = models.PositiveIntegerField(default=0)
    cache_write_1h_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    audio_input_tokens = models.PositiveIntegerField(default=0)
    audio_output_tokens = models.PositiveIntegerField(default=0)
    image_input_tokens = models.PositiveIntegerField(default=0)
    image_output_tokens = models.PositiveIntegerField(default=0)
    usage_source = models.CharField(max_length=16, choices=UsageSource.choices,
                                    default=UsageSource.REPORTED)
    # Recomputable: usage.pricing.cost_usd of the tokens above at `price` (manage.py
    # ledger_verify does it). PROTECT: a price version that billed a row stays.
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    price = models.ForeignKey("providers.Price", null=True, blank=True, on_delete=models.PROTECT,
                              related_name="+")
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, blank=True)
    # The request's tags, lowercase and comma-separated (gateway.intake.attribution), and its
    # end user as the client named it.
    tags = models.CharField(max_length=650, blank=True)
    end_user = models.CharField(max_length=256, blank=True)

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["team", "created_at"]),
            models.Index(fields=["provider_name", "created_at"]),
            models.Index(fields=["public_model", "created_at"]),
            models.Index(fields=["end_user", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.public_model} {self.status}"

    @property
    def tag_list(self) -> list[str]:
        return self.tags.split(",") if self.tags else []


class LedgerRequest(models.Model):
    """The request ids of the ledger's rows where the ledger is partitioned (MySQL, MariaDB,
    TiDB): a partitioned table's unique keys must contain its partitioning column, so this
    small unpartitioned table is what makes a request id unique there. Inserted in the rows'
    transaction (usage.services), deleted with them by usage.archive and after CLAIM_WINDOW by
    usage.partitions.ledger_claims_purge. Unused on SQLite, where the ledger's own unique
    request_id does it."""

    request_id = models.CharField(max_length=64, primary_key=True)
    created_at = models.DateTimeField(db_index=True)


class LedgerArchive(models.Model):
    """One file of ledger rows exported by `manage.py ledger_archive` (usage.archive): a month's
    rows (`part` > 1: rows of that month that arrived after an earlier part), their count and
    the SHA-256 of the file's uncompressed JSON lines. `dropped`: the rows have left the
    ledger (DROP PARTITION or a chunked delete); until then a re-run finishes the drop."""

    month = models.DateField()
    part = models.PositiveSmallIntegerField(default=1)
    path = models.CharField(max_length=1000)
    rows = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    first_created_at = models.DateTimeField(null=True)
    last_created_at = models.DateTimeField(null=True)
    dropped = models.BooleanField(default=False)
    archived_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["month", "part"],
                                               name="uniq_ledger_archive_part")]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} part {self.part}: {self.rows} rows"


class BudgetScope(models.TextChoices):
    KEY = "key"
    TEAM = "team"


class BudgetCounter(models.Model):
    """Spend and open reservations of one key or team in one budget period.

    Amounts are integers in units of 1e-10 USD (the ledger's cost quantum), so they are exact on
    every database. Reservations use a conditional UPDATE (usage.budgets); settlement happens in
    the same transaction as the ledger row, so `spent` always equals the ledger's sum.
    """

    scope = models.CharField(max_length=8, choices=BudgetScope.choices)
    scope_id = models.BigIntegerField()
    period = models.CharField(max_length=8)
    period_start = models.DateTimeField()
    spent_units = models.BigIntegerField(default=0)
    reserved_units = models.BigIntegerField(default=0)
    alerted_pct = models.PositiveSmallIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "scope_id", "period_start"],
                                               name="uniq_budget_counter")]

    def __str__(self) -> str:
        return f"{self.scope}:{self.scope_id} from {self.period_start:%Y-%m-%d}"


class BudgetReservation(models.Model):
    """An open reservation: deleted when its request settles, reconciled if it never does."""

    request_id = models.CharField(max_length=64, unique=True)
    amount_units = models.BigIntegerField()
    # Expired and released from the counters; its request may still settle its spend.
    released = models.BooleanField(default=False)
    key_counter = models.ForeignKey(BudgetCounter, null=True, on_delete=models.CASCADE, related_name="+")
    team_counter = models.ForeignKey(BudgetCounter, null=True, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)


class RequestIntent(models.Model):
    """An admitted request whose ledger row is not written yet, kept in the database when Redis
    cannot hold it (usage.intents). Deleted in the transaction that writes the row; one whose
    owner stopped renewing `expires_at` (the process died) is turned into a `lost` row."""

    request_id = models.CharField(max_length=64, unique=True)
    # usage.intents.Intent, encoded.
    payload = models.TextField()
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.request_id} until {self.expires_at:%H:%M:%S}"


class IdempotencyStatus(models.TextChoices):
    IN_PROGRESS = "in_progress"
    DONE = "done"


class IdempotencyRecord(models.Model):
    """The first response to an `Idempotency-Key` of one API key, kept 24 h for replay."""

    api_key = models.ForeignKey("providers.ApiKey", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    body_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=IdempotencyStatus.choices)
    response_status = models.PositiveSmallIntegerField(null=True)
    response_headers = models.JSONField(default=dict)
    response_body = models.BinaryField(default=b"")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "key"], name="uniq_idempotency_key")]


# What a rollup row is unique by, besides its period.
ROLLUP_GROUP = ("api_key", "key_prefix", "key_name", "team", "team_name", "provider_name",
                "public_model")


class RolledUsage(models.Model):
    """What a usage rollup row holds: the ledger's totals of one key, team (each with its name
    as the ledger stored it), provider and model over a period (HourlyUsage: a UTC hour;
    DailyUsage: a UTC day; MonthlyUsage: a UTC month)."""

    api_key = models.ForeignKey("providers.ApiKey", null=True, on_delete=models.PROTECT, related_name="+")
    key_prefix = models.CharField(max_length=16, blank=True)
    key_name = models.CharField(max_length=100, blank=True)
    team = models.ForeignKey("providers.Team", null=True, on_delete=models.PROTECT, related_name="+")
    team_name = models.CharField(max_length=64, blank=True)
    provider_name = models.CharField(max_length=64)
    public_model = models.CharField(max_length=200)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cache_write_5m_tokens = models.BigIntegerField(default=0)
    cache_write_1h_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    audio_input_tokens = models.BigIntegerField(default=0)
    audio_output_tokens = models.BigIntegerField(default=0)
    image_input_tokens = models.BigIntegerField(default=0)
    image_output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)

    class Meta:
        abstract = True


class DailyUsage(RolledUsage):
    """Ledger rolled up by day, key, team, provider and model (usage.rollups.usage_rollup)."""

    day = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", *ROLLUP_GROUP],
                                               name="uniq_daily_usage")]
        # (provider, day) and (model, day) serve the report's provider and model filters, and
        # the filter's choice lists: MySQL and MariaDB read SELECT DISTINCT of an index's first
        # column with one seek per value (a loose index scan), not a scan of every day's rows.
        indexes = [models.Index(fields=["day"]),
                   models.Index(fields=["provider_name", "day"], name="usage_daily_provider_day"),
                   models.Index(fields=["public_model", "day"], name="usage_daily_model_day")]


class MonthlyUsage(RolledUsage):
    """The daily rollup summed by UTC month (`month`: its first day), recomputed from DailyUsage
    in the transaction that rewrites one of the month's days (usage.rollups.usage_rollup), so
    a month's rows always add up to its days' rows. Reports read it for the whole months of a
    long range: 24 months are 24 x the groups of a month, not 730 x those of a day."""

    month = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["month", *ROLLUP_GROUP],
                                               name="uniq_monthly_usage")]
        indexes = [models.Index(fields=["month"])]


class LedgerDay(models.Model):
    """Whether a past UTC day's rollup still holds every ledger row of that day, so reports
    may read the day from it rather than from the ledger (usage.rollups).

    The rollup creates the row while the day is current. `late_writes` counts the ledger
    transactions that wrote rows of the day after it ended (a stream across midnight, the
    spool, the reaper), each adding 1 in that transaction. `sealed_writes` is `late_writes` as
    the last rollup of the day read it, when that rollup started at least rollups.SEAL_AFTER
    past the day's end (None: no such rollup yet). The day is sealed while the two are equal.
    Reports read yesterday from the ledger unless it is sealed, and an older day unless it has
    no row (rolled up before rows were kept, or no rollup ran while it was current) or is
    sealed."""

    day = models.DateField(primary_key=True)
    late_writes = models.BigIntegerField(default=0)
    sealed_writes = models.BigIntegerField(null=True)


class HourlyUsage(RolledUsage):
    """Ledger rolled up by UTC hour (`hour`: its start), key, team, provider and model, for the
    days reports still read from the ledger (today, and a past day until it is sealed): a page
    reads a sealed hour (LedgerHour) from here and only the others from the ledger. Written by
    the day's rollup in the transaction that writes its DailyUsage, for today and yesterday
    only (rollups.HOURLY_DAYS); a rollup of today deletes the rows of the days before the day
    before yesterday, with their LedgerHour rows."""

    hour = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", *ROLLUP_GROUP],
                                               name="uniq_hourly_usage")]
        indexes = [models.Index(fields=["hour"])]


class LedgerHour(models.Model):
    """Whether an ended UTC hour's HourlyUsage rows still hold every ledger row of that hour:
    LedgerDay's rule at an hour's scale (usage.rollups). The rollup creates the row while the
    hour is current; `late_writes` counts the ledger transactions that wrote rows of the hour
    more than rollups.HOUR_LATE_AFTER after it ended; `sealed_writes` is `late_writes` as a
    rollup read it, when that rollup started at least rollups.HOUR_SEAL_AFTER past the hour's
    end (None: no such rollup yet). The hour is sealed while the two are equal."""

    hour = models.DateTimeField(primary_key=True)
    late_writes = models.BigIntegerField(default=0)
    sealed_writes = models.BigIntegerField(null=True)


class HourlyOperations(models.Model):
    """Ledger rolled up by UTC hour, provider and model for the operations page (usage.rollups
    operations_rollup, run by the same task as DailyUsage). Latency and time to first token are
    kept as counts per fixed bucket (usage.rollups.LATENCY_EDGES_MS: bucket i counts values
    below edge i and at or above edge i-1; the last counts the rest), so percentiles are
    interpolated from the buckets, never read from the rows."""

    hour = models.DateTimeField()
    provider_name = models.CharField(max_length=64)
    public_model = models.CharField(max_length=200)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.BigIntegerField(default=0)
    latency_buckets = models.JSONField(default=list)
    # Rows with a time to first token (streams that sent one).
    ttft_count = models.PositiveIntegerField(default=0)
    ttft_sum_ms = models.BigIntegerField(default=0)
    ttft_buckets = models.JSONField(default=list)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", "provider_name", "public_model"],
                                               name="uniq_hourly_operations")]
        indexes = [models.Index(fields=["hour"])]
