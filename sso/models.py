"""Who an IdP says a person is: the (issuer, subject) pair of their ID tokens, linked to the
Django user created at their first sign-in."""
from django.conf import settings
from django.db import models


class SsoIdentity(models.Model):
    # OIDC Core 5.7: iss and sub together are the only claims an RP can rely on as a stable
    # identifier; a person's email or username may change or be given to someone else.
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="sso_identity")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "SSO identity"
        verbose_name_plural = "SSO identities"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"],
                                               name="sso_identity_issuer_subject")]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"
