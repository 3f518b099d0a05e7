"""The IR's own invariants and the reasoning conversions in CodecOptions."""
from __future__ import annotations

import dataclasses

import pytest

from gateway.types import (ChatRequest, CodecOptions, DocumentPart, ImagePart, Message,
                           TextPart, ToolChoice, Usage)


@pytest.mark.parametrize("budget, effort", [
    (500, "low"), (1024, "low"), (3999, "low"), (4000, "medium"), (7999, "medium"),
    (8000, "high"), (100_000, "high")])
def test_budget_maps_to_the_effort_of_the_largest_threshold_not_above_it(budget: int,
                                                                         effort: str) -> None:
    assert CodecOptions().effort_for_budget(budget) == effort


def test_effort_maps_to_a_budget_and_unknown_efforts_to_medium() -> None:
    options = CodecOptions(effort_to_budget={"low": 2000, "medium": 6000})
    assert (options.budget_for_effort("low"), options.budget_for_effort("turbo")) \
        == (2000, 6000)
    assert CodecOptions().budget_for_effort("high") == 8000


def test_parts_refuse_ambiguous_sources() -> None:
    with pytest.raises(ValueError):
        ImagePart(data="AAAA", media_type="image/png", url="https://x.test/a.png")
    with pytest.raises(ValueError):
        ImagePart(data="AAAA")
    with pytest.raises(ValueError):
        DocumentPart(text="a", url="https://x.test/a.pdf")
    with pytest.raises(ValueError):
        ToolChoice("tool")
    with pytest.raises(ValueError):
        ToolChoice("auto", "f")


def test_ir_values_are_frozen_and_usage_totals_include_cached_input() -> None:
    req = ChatRequest(model="m", messages=(Message("user", (TextPart("hi"),)),),
                      surface="openai_chat")
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.model = "other"  # type: ignore[misc]
    assert Usage(input_tokens=100, output_tokens=5, cached_tokens=80).total_tokens == 105


def test_empty_maps_turn_the_conversions_off() -> None:
    options = CodecOptions(budget_to_effort={}, effort_to_budget={})
    assert options.effort_for_budget(5000) is None
    assert options.budget_for_effort("high") is None
