"""Settings of the bare proxy: no apps, no middleware, no database; one view.

BENCH_UPSTREAM_URL: the fake upstream's chat completions URL.
BENCH_PROXY_CLIENT: httpx | httpx-aiohttp | aiohttp — the upstream HTTP client the view uses.
"""
import os

SECRET_KEY = "bench-bare-proxy"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.bare.views"
DATABASES: dict = {}
USE_TZ = True
BENCH_UPSTREAM_URL = os.environ["BENCH_UPSTREAM_URL"]
BENCH_PROXY_CLIENT = os.environ.get("BENCH_PROXY_CLIENT", "aiohttp")
