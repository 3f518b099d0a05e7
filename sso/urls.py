"""/sso/: the OIDC sign-in, its callback (the redirect URI to register at the IdP:
https://<gateway>/sso/callback/) and the failure page."""
from django.urls import path

from sso import views

app_name = "sso"

urlpatterns = [
    path("login/", views.SsoLoginView.as_view(), name="login"),
    path("callback/", views.SsoCallbackView.as_view(), name="callback"),
    path("failed/", views.sso_failed, name="failed"),
]
