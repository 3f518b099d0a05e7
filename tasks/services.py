"""Writes of the tasks app: the routing file's `tasks:` section. Every write bumps the config
version (through config_apply, or the admin), so running servers reload the task table."""
from __future__ import annotations

from collections.abc import Sequence

from providers.config_file import ConfigError, SectionResult
from providers.models import Team
from tasks.config_file import TaskSpec
from tasks.models import Task


def task_upsert(*, spec: TaskSpec) -> Task:
    """Create or update the task `spec.slug`. Its `teams`, when given, replace its allowed
    teams (an unknown team: ConfigError); its allowed keys are admin-only."""
    task, _ = Task.objects.update_or_create(slug=spec.slug, defaults={
        "model": spec.model, "system_prompt": spec.system_prompt, "max_tokens": spec.max_tokens,
        "temperature": spec.temperature, "output_schema": spec.output_schema,
        "enabled": spec.enabled, "description": spec.description})
    if spec.teams is not None:
        teams = list(Team.objects.filter(name__in=spec.teams))
        missing = sorted(set(spec.teams) - {team.name for team in teams})
        if missing:
            raise ConfigError(f"tasks: {spec.slug}: unknown team(s) {', '.join(missing)}")
        task.allowed_teams.set(teams)
    return task


def tasks_apply(specs: Sequence[TaskSpec], *, prune: bool) -> SectionResult:
    """Upsert every task of the section; with `prune`, delete the tasks it does not list.
    Runs inside config_apply's transaction, which bumps the config version."""
    for spec in specs:
        task_upsert(spec=spec)
    deleted = 0
    if prune:
        deleted = Task.objects.exclude(slug__in=[s.slug for s in specs]).delete()[1] \
            .get(Task._meta.label, 0)
    return SectionResult(written=len(specs), deleted=deleted)
