"""ASGI entry point: `uvicorn gateway.asgi:application` (production) or daphne (runserver).

Static files (the admin's CSS/JS) are served by Django's ASGI static handler, which only
intercepts paths under STATIC_URL; a reverse proxy may serve `collectstatic` output instead.
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

django_application = get_asgi_application()

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

application = ASGIStaticFilesHandler(django_application)
