from django.contrib import admin
from django.urls import path
from django.urls import include

from usage import urls as usage_urls

from gateway.health import health, health_detailed
from gateway import home
from gateway.metrics import metrics_view
from gateway.surfaces import openai_chat, openai_completions, openai_embeddings
from gateway.surfaces import anthropic_messages, models, openai_responses
from tasks import views as tasks

urlpatterns = [
    path("", home.home, name="home"),
    path("v1/chat/completions", openai_chat.chat_completions),
    path("v1/completions", openai_completions.completions),
    path("v1/embeddings", openai_embeddings.embeddings),
    path("v1/messages", anthropic_messages.messages),
    path("v1/messages/count_tokens", anthropic_messages.count_tokens),
    path("v1/responses", openai_responses.responses),
    path("v1/responses/<str:response_id>", openai_responses.response_detail),
    path("v1/responses/<str:response_id>/input_items", openai_responses.response_input_items),
    path("v1/models", models.models_list),
    path("v1/models/<path:model>", models.model_detail),
    path("health", health),
    path("health/detailed", health_detailed),
    path("metrics", metrics_view),
    path("admin/", admin.site.urls),
    path("reports/", include("usage.urls")),
    path("api/usage/", include((usage_urls.api_urlpatterns, "usage_api"))),
    path("api/tasks/<slug:slug>", tasks.task_call),
    path("api/chat/<slug:slug>", tasks.task_call),
    path("chat/", include("chat.urls")),
    path("sso/", include("sso.urls")),
]

# API paths answer errors Django raises itself (bad Host header, unknown path, a crash) in the
# surface's JSON shape; other paths keep Django's pages.
handler400 = "gateway.responses.bad_request"
handler403 = "gateway.home.permission_denied"
handler404 = "gateway.responses.not_found"
handler500 = "gateway.responses.server_error"
