"""Chat history trimmed to the context window, pure."""
from __future__ import annotations

from chat.context import Turn, chat_request, history_budget, history_trim, turn_tokens


def _turns(*contents: str) -> list[Turn]:
    return [Turn(role="user" if i % 2 == 0 else "assistant", content=c)
            for i, c in enumerate(contents)]


def test_everything_fits_nothing_is_dropped():
    turns = _turns("hello", "hi", "how are you")
    assert history_trim(turns, budget_tokens=1000) == (turns, 0)


def test_oldest_turns_go_first_and_the_kept_history_starts_with_a_user_turn():
    turns = _turns("a" * 400, "b" * 400, "c" * 400, "d" * 40, "e" * 40)
    # Room for e, d, c (the assistant turn "d" alone would start the history otherwise).
    budget = 3 + sum(turn_tokens(t) for t in turns[2:])
    kept, dropped = history_trim(turns, budget_tokens=budget)
    assert [t.content[0] for t in kept] == ["c", "d", "e"] and dropped == 2
    kept, dropped = history_trim(turns, budget_tokens=budget - 1)
    assert [t.content[0] for t in kept] == ["e"] and dropped == 4


def test_the_newest_turn_is_sent_even_when_it_alone_is_too_large():
    turns = _turns("short", "reply", "x" * 10_000)
    kept, dropped = history_trim(turns, budget_tokens=100)
    assert kept == turns[-1:] and dropped == 2


def test_the_answer_shares_the_window_but_history_keeps_a_minimum():
    assert history_budget(window=8000, max_tokens=2000) == 6000
    assert history_budget(window=1000, max_tokens=4000) == 256


def test_request_is_in_the_ir_with_the_turns_in_order():
    req = chat_request(model="m", turns=_turns("q", "a", "q2"), max_tokens=50)
    assert [(m.role, m.content[0].text) for m in req.messages] == \
        [("user", "q"), ("assistant", "a"), ("user", "q2")]
    assert (req.stream, req.include_usage, req.max_tokens, req.system) == (True, True, 50, ())
