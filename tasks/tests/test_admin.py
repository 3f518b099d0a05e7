"""The task admin: schemas are checked when saved, and saves reach running servers."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tasks.models import Task
from providers.models import ConfigVersion


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", "r@example.test", "pw"))
    return client


def _form(**overrides) -> dict:
    return {"slug": "risk_check", "description": "", "model": "gpt-test",
            "system_prompt": "Review.", "max_tokens": "600", "temperature": "",
            "output_schema": "null", "enabled": "on", **overrides}


def test_unusable_schema_is_refused_with_the_path(admin_client):
    response = admin_client.post("/admin/tasks/task/add/",
                                 _form(output_schema='{"properties": {"a": {"$ref": "#/defs/x"}}}'))
    assert response.status_code == 200
    assert "$.properties.a.$ref: cannot be resolved within the schema" in response.content.decode()
    assert not Task.objects.exists()


def test_schema_with_defs_and_refs_is_saved(admin_client):
    schema = '{"$defs": {"r": {"enum": ["low", "high"]}}, "properties": {"risk": {"$ref": "#/$defs/r"}}}'
    response = admin_client.post("/admin/tasks/task/add/", _form(output_schema=schema))
    assert response.status_code == 302
    assert Task.objects.get().output_schema["properties"] == {"risk": {"$ref": "#/$defs/r"}}


def test_saved_task_bumps_the_config_version(admin_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/admin/tasks/task/add/",
                                     _form(output_schema='{"type": "object"}'))
    assert response.status_code == 302
    assert Task.objects.get().output_schema == {"type": "object"}
    assert ConfigVersion.objects.exists()
