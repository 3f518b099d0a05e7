from django.contrib import admin
from django.urls import path

from gateway.health import health
from gateway.surfaces import openai_chat

urlpatterns = [
    path("v1/chat/completions", openai_chat.chat_completions),
    path("health", health),
    path("admin/", admin.site.urls),
]
