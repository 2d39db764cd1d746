"""What counts as an empty text at the API: nothing left after whitespace, zero-width and control characters.

One character set drives both the check (``require_visible``) and the OpenAPI ``pattern`` (``visible_pattern()``),
so the schema a client reads and the rule the service applies cannot drift apart.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import cache

# Unicode "Other, control" (NUL, escapes, C1) and "Other, format" (zero-width space/joiners U+200B..U+200D,
# word joiner U+2060, BOM U+FEFF, bidi marks...): nothing a reader sees, nothing a model can use.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf"})
EMPTY_TEXT_MESSAGE = "text is empty after removing whitespace, zero-width and control characters"


def is_invisible(char: str) -> bool:
    """Whitespace, or a control/format character (Unicode category Cc or Cf)."""
    return char.isspace() or unicodedata.category(char) in INVISIBLE_CATEGORIES


@cache
def _invisible_class() -> str:
    """The invisible characters as a regex class body of ranges (about 25), literal characters escaped."""
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if is_invisible(chr(code)):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "".join(
        re.escape(chr(low)) if low == high else f"{re.escape(chr(low))}-{re.escape(chr(high))}"
        for low, high in ranges
    )


@cache
def visible_pattern() -> str:
    """A regex that finds a text's first visible character (unanchored, as JSON Schema's ``pattern``)."""
    return f"[^{_invisible_class()}]"


@cache
def _visible() -> re.Pattern[str]:
    return re.compile(visible_pattern())


def has_visible_text(text: str) -> bool:
    return _visible().search(text) is not None


def require_visible(text: str) -> str:
    """A pydantic after-validator: the text unchanged, or ValueError when nothing visible is left."""
    if not has_visible_text(text):
        raise ValueError(EMPTY_TEXT_MESSAGE)
    return text
