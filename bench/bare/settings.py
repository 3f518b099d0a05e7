"""Settings of the bare proxy: one view, no database.

BENCH_UPSTREAM_URL: the fake upstream's chat completions URL.
BENCH_PROXY_CLIENT: httpx | httpx-aiohttp | aiohttp — the upstream HTTP client the view uses.
BENCH_BARE_MIDDLEWARE: none (default) | django — Django's stock middleware, as gateway/settings.py
lists it, to measure what MiddlewareMixin's per-hook thread hops cost an async view.
"""
import os

SECRET_KEY = "bench-bare-proxy"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
if os.environ.get("BENCH_BARE_MIDDLEWARE") == "django":
    INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes",
                      "django.contrib.sessions", "django.contrib.messages"]
    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ]
ROOT_URLCONF = "bench.bare.views"
DATABASES: dict = {}
USE_TZ = True
BENCH_UPSTREAM_URL = os.environ["BENCH_UPSTREAM_URL"]
BENCH_PROXY_CLIENT = os.environ.get("BENCH_PROXY_CLIENT", "aiohttp")
