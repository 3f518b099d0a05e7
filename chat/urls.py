"""/chat/: the chat page, its sign-in, the history API and the streaming endpoints."""
from django.urls import path

from chat import turns, views

app_name = "chat"

urlpatterns = [
    path("", views.chat_page, name="page"),
    path("<int:session_id>/", views.chat_page, name="session_page"),
    path("login/", views.ChatLoginView.as_view(), name="login"),
    path("logout/", views.ChatLogoutView.as_view(), name="logout"),
    path("api/models", turns.models_list, name="models"),
    path("api/sessions", views.sessions, name="sessions"),
    path("api/sessions/<int:session_id>", views.session, name="session"),
    path("api/sessions/<int:session_id>/messages", turns.session_messages, name="messages"),
]
