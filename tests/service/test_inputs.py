"""The empty-text rule (components/serving/text_rules.py): the check and the OpenAPI pattern agree."""

from __future__ import annotations

import re
import sys

import pytest

from components.serving.text_rules import (
    EMPTY_TEXT_MESSAGE,
    has_visible_text,
    is_invisible,
    require_visible,
    visible_pattern,
)

EMPTY = [
    "",
    " ",
    "\t\n\r",
    "\u00a0\u3000\u2003",
    "\u200b",
    "\u200c\u200d",
    "\u2060",
    "\ufeff",
    "\x00",
    "\x00 \x00",
    "\x1b",
    "\x7f\x85",
    "\u200e\u202e",
    "\U000e0001\U000e0041",
]
VISIBLE = ["a", " a ", "\u200bword", "\x00x", "é", "漢字", "🙂", "-", ".", "\u200b1\ufeff"]


@pytest.mark.parametrize("text", EMPTY)
def test_invisible_only_texts_are_empty(text):
    assert not has_visible_text(text)
    with pytest.raises(ValueError, match=re.escape(EMPTY_TEXT_MESSAGE)):
        require_visible(text)


@pytest.mark.parametrize("text", VISIBLE)
def test_texts_with_a_visible_character_pass_unchanged(text):
    assert has_visible_text(text)
    assert require_visible(text) == text


def test_the_schema_pattern_matches_exactly_the_visible_characters():
    # The pattern is built from ranges of escaped characters: every code point must land on the right side.
    pattern = re.compile(visible_pattern())
    wrong = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if (pattern.fullmatch(chr(code)) is None) != is_invisible(chr(code))
    ]
    assert not wrong
    assert is_invisible("\u200b") and is_invisible("\x00") and is_invisible(" ") and not is_invisible("a")
