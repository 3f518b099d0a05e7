"""A chat's title: the first words of its first message (chat.services.title_from)."""
from __future__ import annotations

from chat.services import TITLE_LENGTH, title_from


def test_a_short_message_is_its_own_title_on_one_line():
    assert title_from("  Compare our\nQ3 and   Q4 invoices ") == "Compare our Q3 and Q4 invoices"
    assert title_from("x" * TITLE_LENGTH) == "x" * TITLE_LENGTH


def test_a_long_message_is_cut_after_its_last_whole_word_that_fits():
    title = title_from("Write a migration plan for moving the billing service from the monolith "
                       "to its own database, with a rollback step")
    assert title == "Write a migration plan for moving the billing service from…"
    assert len(title) <= TITLE_LENGTH
    # Punctuation before the cut goes with it.
    assert title_from("a" * 55 + ", " + "b" * 20) == "a" * 55 + "…"


def test_a_first_word_longer_than_a_title_is_cut_itself():
    url = "https://wiki.example.test/engineering/runbooks/billing-service/rollback?version=7"
    assert title_from(url) == url[:TITLE_LENGTH - 1] + "…"
