"""Task system prompt templates, pure."""
from __future__ import annotations

import pytest

from tasks.prompts import PromptError, prompt_render, prompt_variables


def test_variables_are_replaced_and_braces_escaped():
    template = "Review for {team} ({level}). JSON like {{\"risk\": …}}. {not a var} stays."
    assert prompt_variables(template) == {"team", "level"}
    assert prompt_render(template, {"team": "ops", "level": 3, "unused": "x"}) == \
        'Review for ops (3). JSON like {"risk": …}. {not a var} stays.'


def test_non_string_values_are_json():
    assert prompt_render("{a} {b}", {"a": ["x", 1], "b": None}) == '["x", 1] null'


def test_missing_variables_are_all_named():
    with pytest.raises(PromptError) as error:
        prompt_render("{b} {a} {b}", {})
    assert error.value.missing == ["a", "b"]


def test_templates_cannot_reach_into_objects():
    assert prompt_render("{x.__class__} {x[0]}", {"x": "s"}) == "{x.__class__} {x[0]}"
