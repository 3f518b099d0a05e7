"""Django settings: the only module that reads the environment (django-environ; `.env` honoured).

Embedded default: SQLite under var/, no Redis (local-memory cache, in-process limits, Celery tasks
run eagerly). Production (DEBUG off) refuses to start with the development SECRET_KEY or without
GATEWAY_ENCRYPTION_KEYS.
"""
import os
from pathlib import Path
from urllib.parse import unquote
from urllib.request import getproxies_environment

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
VAR_DIR.mkdir(exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default=DEV_SECRET_KEY)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
GATEWAY_ENCRYPTION_KEYS = env.list("GATEWAY_ENCRYPTION_KEYS", default=[])

if not DEBUG:
    if SECRET_KEY in ("", DEV_SECRET_KEY):
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    if not GATEWAY_ENCRYPTION_KEYS:
        raise ImproperlyConfigured("GATEWAY_ENCRYPTION_KEYS must be set when DEBUG is off")

# Production hardening (`manage.py check --deploy` passes with no warnings when DEBUG is off).
# Behind a TLS-terminating proxy set SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO,https.
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    # Load balancers, Prometheus and API clients inside the network may use plain HTTP; the
    # admin and the browser pages are redirected to HTTPS.
    SECURE_REDIRECT_EXEMPT = [r"^health", r"^metrics$", r"^v1/", r"^api/"]
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
_proxy_header = env.list("SECURE_PROXY_SSL_HEADER", default=[])
if len(_proxy_header) == 2:
    SECURE_PROXY_SSL_HEADER = tuple(_proxy_header)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    # the /v1/realtime consumer (gateway.realtime); no channel layer is used
    "channels",
    "providers",
    "usage",
    "tasks",
    "chat",
    "response_store",
    # OIDC single sign-on (off unless GATEWAY_SSO_ISSUER is set)
    "sso",
]

# The proxy views do not use sessions, CSRF or auth middleware (they authenticate API keys
# themselves), but Django runs every middleware for every request. All of these are
# async-capable, so no sync hop is added to the proxy path.
MIDDLEWARE = [
    "gateway.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "gateway.urls"
ASGI_APPLICATION = "gateway.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'gateway.sqlite3'}"),
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent ledger writers wait for the lock instead of failing.
    _db.setdefault("OPTIONS", {}).update({"timeout": 30, "transaction_mode": "IMMEDIATE"})
    # A file (not :memory:) so the live test server's threads share it; one per test run.
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    _db.setdefault("CONN_MAX_AGE", 60)
    if "mysql" in _db["ENGINE"]:
        _db.setdefault("OPTIONS", {}).setdefault("charset", "utf8mb4")
        _db["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}

REDIS_URL = env.str("REDIS_URL", default="")
# REDIS_URL names one node of a Redis Cluster (gateway.redis_client builds every client).
GATEWAY_REDIS_CLUSTER = env.bool("GATEWAY_REDIS_CLUSTER", default=False)
if REDIS_URL and not GATEWAY_REDIS_CLUSTER:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": REDIS_URL}}
else:
    # Django's RedisCache speaks to one server (a cluster node answers MOVED for other slots,
    # and its get_many/set_many send MGET/MSET across slots); nothing in the gateway uses
    # Django's cache, so on a cluster it stays per process (docs/operations.md).
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

if GATEWAY_REDIS_CLUSTER and REDIS_URL and not env.str("CELERY_BROKER_URL", default=""):
    raise ImproperlyConfigured(
        "GATEWAY_REDIS_CLUSTER is set: Celery's broker cannot be a Redis Cluster, so "
        "CELERY_BROKER_URL must name a standalone Redis (or another broker)")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not (REDIS_URL or env.str("CELERY_BROKER_URL", default=""))
CELERY_TASK_IGNORE_RESULT = True
# Budget periods need no reset task: each period has its own counter row (usage.budgets).
CELERY_BEAT_SCHEDULE = {
    "ledger-rollup": {"task": "usage.rollup", "schedule": 300.0},
    "budget-reconcile": {"task": "usage.reconcile_budgets", "schedule": 600.0},
    "expire-reservations": {"task": "usage.expire_reservations", "schedule": 60.0},
    "purge-idempotency": {"task": "usage.purge_idempotency", "schedule": 3600.0},
    "budget-alerts": {"task": "usage.budget_alerts", "schedule": 60.0},
    "flush-ledger-spool": {"task": "usage.flush_spool", "schedule": 10.0},
    "reap-intents": {"task": "usage.reap_intents", "schedule": 30.0},
    "ledger-partitions": {"task": "usage.ledger_partitions", "schedule": 86400.0},
    "purge-stored-responses": {"task": "response_store.purge", "schedule": 3600.0},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/admin/login/"
# Local accounts sign in with a password; the SSO backend only answers the OIDC callback
# (sso.views) and stays listed when SSO is off, so the sessions of SSO users stay valid.
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend", "sso.backends.SsoBackend"]


# DRF: staff-only unless a view names its own policy (the finance API: usage/api.py).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "COERCE_DECIMAL_TO_STRING": True,
}

GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=10 * 1024 * 1024)
# Standard HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY (either case) for upstream calls.
GATEWAY_UPSTREAM_PROXIES = getproxies_environment()
GATEWAY_CONNECT_TIMEOUT_S = env.float("GATEWAY_CONNECT_TIMEOUT_S", default=10.0)
GATEWAY_READ_TIMEOUT_S = env.float("GATEWAY_READ_TIMEOUT_S", default=600.0)
# How often a process checks whether the routing config changed (admin, gateway_apply).
GATEWAY_CONFIG_POLL_S = env.float("GATEWAY_CONFIG_POLL_S", default=1.0)
# API keys are looked up by digest and cached per process (providers.cache.KeyCache): at most
# this many, each for at most this long (a safety net: key changes evict through Redis pub/sub
# and the key change feed). Feed rows are kept this long.
GATEWAY_KEY_CACHE_SIZE = env.int("GATEWAY_KEY_CACHE_SIZE", default=20_000)
GATEWAY_KEY_CACHE_TTL_S = env.float("GATEWAY_KEY_CACHE_TTL_S", default=300.0)
GATEWAY_KEY_FEED_RETENTION_S = env.float("GATEWAY_KEY_FEED_RETENTION_S", default=3600.0)
if GATEWAY_KEY_CACHE_SIZE < 1:
    raise ImproperlyConfigured("GATEWAY_KEY_CACHE_SIZE must be >= 1")
# Paths answered whatever their Host header (every other path needs a Host in ALLOWED_HOSTS):
# kubelet and load-balancer probes send the pod's IP. Exact paths; /health reveals nothing.
GATEWAY_ANY_HOST_PATHS = tuple(env.list("GATEWAY_ANY_HOST_PATHS", default=["/health"]))
# Slow clients: seconds without a body chunk (408), and without write progress (dropped).
GATEWAY_BODY_TIMEOUT_S = env.float("GATEWAY_BODY_TIMEOUT_S", default=30.0)
GATEWAY_WRITE_TIMEOUT_S = env.float("GATEWAY_WRITE_TIMEOUT_S", default=60.0)
# /v1/realtime (gateway.realtime): the largest message either side may send (OpenAI accepts
# 15 MiB of audio per input_audio_buffer.append), and the seconds a session may pass with no
# message in either direction before it is closed.
GATEWAY_REALTIME_MAX_MESSAGE_BYTES = env.int("GATEWAY_REALTIME_MAX_MESSAGE_BYTES",
                                             default=16 * 1024 * 1024)
GATEWAY_REALTIME_IDLE_TIMEOUT_S = env.float("GATEWAY_REALTIME_IDLE_TIMEOUT_S", default=300.0)
# Responses API: how long a stored response (previous_response_id, GET /v1/responses/{id})
# is kept; OpenAI keeps them 30 days.
GATEWAY_RESPONSES_TTL_S = env.float("GATEWAY_RESPONSES_TTL_S", default=30 * 86400.0)
# Budgeted keys while the database is unreachable: refused (503) unless this is on.
GATEWAY_BUDGETS_FAIL_OPEN = env.bool("GATEWAY_BUDGETS_FAIL_OPEN", default=False)
# Provider base URLs on link-local/metadata addresses are refused unless this is on.
GATEWAY_ALLOW_LINK_LOCAL_UPSTREAMS = env.bool("GATEWAY_ALLOW_LINK_LOCAL_UPSTREAMS", default=False)
# Crash-safe accounting (usage.intents): how often each serving process renews the intents of
# its requests in flight and reaps those of dead processes. An intent lives three intervals
# unrenewed, so a crashed process's requests get their `lost` rows within about four.
# Journal each finished row in Redis beside its request's intent and end the response then,
# committing it to the database just after (gateway.finish, usage.intents); Redis only.
GATEWAY_LEDGER_JOURNAL = env.bool("GATEWAY_LEDGER_JOURNAL", default=False)
GATEWAY_REAPER_INTERVAL_S = env.float("GATEWAY_REAPER_INTERVAL_S", default=20.0)
if GATEWAY_REAPER_INTERVAL_S <= 0:
    raise ImproperlyConfigured("GATEWAY_REAPER_INTERVAL_S must be > 0")
# Where ledger rows wait when the database refuses them and Redis is not configured.
GATEWAY_SPOOL_DIR = VAR_DIR / "spool"
# Chat UI (chat.context): the context window assumed for a model (prompt + answer, estimated
# tokens), per-model overrides ("model=tokens,…"), and the answer's cap when the user's key has
# no max_tokens_default.
GATEWAY_CHAT_CONTEXT_TOKENS = env.int("GATEWAY_CHAT_CONTEXT_TOKENS", default=16000)
GATEWAY_CHAT_CONTEXT_TOKENS_BY_MODEL = {
    model: int(tokens)
    for model, tokens in env.dict("GATEWAY_CHAT_CONTEXT_TOKENS_BY_MODEL", default={}).items()}
GATEWAY_CHAT_MAX_TOKENS = env.int("GATEWAY_CHAT_MAX_TOKENS", default=2048)
# Django reads the body before the view; the gateway enforces its own limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_BODY_BYTES

# /metrics: optional bearer token; PROMETHEUS_MULTIPROC_DIR (read by prometheus_client itself)
# makes counters add up across worker processes.
GATEWAY_METRICS_TOKEN = env.str("GATEWAY_METRICS_TOKEN", default="")
# One line per request in either format; secrets are masked by the formatters.
GATEWAY_LOG_FORMAT = env.str("GATEWAY_LOG_FORMAT", default="text")

# OpenTelemetry traces (gateway.tracing): off unless an OTLP endpoint or Langfuse keys are set.
# The SDK itself reads the standard OTEL_BSP_* (batching) and OTEL_TRACES_SAMPLER variables.
GATEWAY_OTEL_ENDPOINT = env.str("GATEWAY_OTEL_ENDPOINT", default="")
GATEWAY_OTEL_PROTOCOL = env.str("GATEWAY_OTEL_PROTOCOL", default="http/protobuf")
if GATEWAY_OTEL_PROTOCOL not in ("http/protobuf", "grpc"):
    raise ImproperlyConfigured("GATEWAY_OTEL_PROTOCOL must be http/protobuf or grpc")
# "name=value,name=value", values percent-encoded as in OTEL_EXPORTER_OTLP_HEADERS.
GATEWAY_OTEL_HEADERS = {
    name.strip(): unquote(value.strip())
    for name, _, value in (item.partition("=")
                           for item in env.str("GATEWAY_OTEL_HEADERS", default="").split(","))
    if name.strip()}
GATEWAY_OTEL_SERVICE_NAME = env.str("GATEWAY_OTEL_SERVICE_NAME", default="llm-gateway")
# Request and response bodies on spans are cut to this many bytes; 0 records none.
GATEWAY_OTEL_MAX_BODY_BYTES = env.int("GATEWAY_OTEL_MAX_BODY_BYTES", default=4096)
GATEWAY_OTEL_TIMEOUT_S = env.float("GATEWAY_OTEL_TIMEOUT_S", default=10.0)
GATEWAY_OTEL_LANGFUSE_HOST = env.str("GATEWAY_OTEL_LANGFUSE_HOST",
                                     default="https://cloud.langfuse.com")
GATEWAY_OTEL_LANGFUSE_PUBLIC_KEY = env.str("GATEWAY_OTEL_LANGFUSE_PUBLIC_KEY", default="")
GATEWAY_OTEL_LANGFUSE_SECRET_KEY = env.str("GATEWAY_OTEL_LANGFUSE_SECRET_KEY", default="")
if bool(GATEWAY_OTEL_LANGFUSE_PUBLIC_KEY) != bool(GATEWAY_OTEL_LANGFUSE_SECRET_KEY):
    raise ImproperlyConfigured("set both GATEWAY_OTEL_LANGFUSE_PUBLIC_KEY and "
                               "GATEWAY_OTEL_LANGFUSE_SECRET_KEY, or neither")

# OIDC single sign-on (sso/, docs/operations.md#single-sign-on-oidc): off unless an issuer is
# set. Endpoints come from the issuer's discovery document unless given here.
GATEWAY_SSO_ISSUER = env.str("GATEWAY_SSO_ISSUER", default="").rstrip("/")
GATEWAY_SSO_CLIENT_ID = env.str("GATEWAY_SSO_CLIENT_ID", default="")
GATEWAY_SSO_CLIENT_SECRET = env.str("GATEWAY_SSO_CLIENT_SECRET", default="")
GATEWAY_SSO_SCOPES = env.str("GATEWAY_SSO_SCOPES", default="openid email profile")
GATEWAY_SSO_GROUPS_CLAIM = env.str("GATEWAY_SSO_GROUPS_CLAIM", default="groups")
# "idp-group=role;role,…": a role is superuser, staff or the name of a Django group (finance).
GATEWAY_SSO_GROUP_ROLES = {
    group.strip(): tuple(role.strip() for role in roles.split(";") if role.strip())
    for group, roles in env.dict("GATEWAY_SSO_GROUP_ROLES", default={}).items()}
GATEWAY_SSO_ALLOWED_EMAIL_DOMAINS = tuple(
    domain.lower() for domain in env.list("GATEWAY_SSO_ALLOWED_EMAIL_DOMAINS", default=[]))
GATEWAY_SSO_SESSION_MAX_AGE_S = env.int("GATEWAY_SSO_SESSION_MAX_AGE_S", default=8 * 3600)
GATEWAY_SSO_AUTHORIZATION_ENDPOINT = env.str("GATEWAY_SSO_AUTHORIZATION_ENDPOINT", default="")
GATEWAY_SSO_TOKEN_ENDPOINT = env.str("GATEWAY_SSO_TOKEN_ENDPOINT", default="")
GATEWAY_SSO_USERINFO_ENDPOINT = env.str("GATEWAY_SSO_USERINFO_ENDPOINT", default="")
GATEWAY_SSO_JWKS_URI = env.str("GATEWAY_SSO_JWKS_URI", default="")
GATEWAY_SSO_SIGN_ALGO = env.str("GATEWAY_SSO_SIGN_ALGO", default="RS256")
GATEWAY_SSO_TOKEN_AUTH_METHOD = env.str("GATEWAY_SSO_TOKEN_AUTH_METHOD",
                                        default="client_secret_basic")
GATEWAY_SSO_TIMEOUT_S = env.float("GATEWAY_SSO_TIMEOUT_S", default=10.0)
if GATEWAY_SSO_ISSUER:
    if not (GATEWAY_SSO_CLIENT_ID and GATEWAY_SSO_CLIENT_SECRET):
        raise ImproperlyConfigured("GATEWAY_SSO_ISSUER needs GATEWAY_SSO_CLIENT_ID and "
                                   "GATEWAY_SSO_CLIENT_SECRET")
    if "openid" not in GATEWAY_SSO_SCOPES.split():
        raise ImproperlyConfigured("GATEWAY_SSO_SCOPES must include openid")
    if GATEWAY_SSO_TOKEN_AUTH_METHOD not in ("client_secret_basic", "client_secret_post"):
        raise ImproperlyConfigured("GATEWAY_SSO_TOKEN_AUTH_METHOD must be client_secret_basic "
                                   "or client_secret_post")
    # mozilla-django-oidc verifies RS* and ES* signatures with the IdP's JWKS.
    if not GATEWAY_SSO_SIGN_ALGO.startswith(("RS", "ES")):
        raise ImproperlyConfigured("GATEWAY_SSO_SIGN_ALGO must be RS256, RS384, RS512, ES256, "
                                   "ES384 or ES512")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"()": "gateway.logs.MaskingFormatter",
                 "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "gateway.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler",
                             "formatter": "json" if GATEWAY_LOG_FORMAT == "json" else "text"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
