"""Chat history per user (the task endpoints are the tasks app's).

Chat traffic is attributed to an API key of the user's own (`ChatAccount.api_key`, created on
first use), so routing, budgets, rate limits and the ledger treat it exactly like API traffic:
a per-user budget, model allow-list or rate limit is set on that key. Revoking it turns chat
off for the user.
"""
from django.conf import settings
from django.db import models


class ChatAccount(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="chat_account")
    # PROTECT: deleting the key would silently mint a fresh, unlimited one; revoke it instead.
    api_key = models.OneToOneField("providers.ApiKey", on_delete=models.PROTECT,
                                   related_name="chat_account")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"chat account of {self.user}"


class ChatSessionQuerySet(models.QuerySet):
    def for_user(self, user_id: int):
        return self.filter(user_id=user_id)


class ChatSession(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="chat_sessions")
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, blank=True, help_text="The model used last.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ChatSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"chat {self.pk}"


class MessageRole(models.TextChoices):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(models.TextChoices):
    COMPLETE = "complete"
    STOPPED = "stopped"   # the user pressed stop: the partial answer is kept
    ERROR = "error"       # refused (budget, rate limit) or failed upstream; see `error`


class ChatMessage(models.Model):
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=MessageStatus.choices,
                              default=MessageStatus.COMPLETE)
    error = models.CharField(max_length=500, blank=True)
    model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=64, blank=True)
    # The ledger row of the call that produced an assistant message.
    request_id = models.CharField(max_length=64, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    # Earlier messages left out of this answer's context to fit the context window.
    context_trimmed = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.role} message {self.pk}"
