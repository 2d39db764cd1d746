"""Bytes to text without rewriting valid text.

Text files (CSV, JSONL, text) are UTF-8, checked line by line: a bad line is an error
naming it, or, when the source asks for it, only that line is repaired and reported.
Decoding a whole file again in another encoding would silently rewrite every valid
non-ASCII character of it ("£" becomes "Â£"). An article of a class folder is its own
file, so it may fall back to an older encoding on its own.
"""

from __future__ import annotations

import codecs
import logging
from pathlib import Path
from typing import Literal

from components.config import SourceSpec
from components.data.rows import RowIssue, RowRef
from components.data.validation import DataValidationError

log = logging.getLogger(__name__)


def decode_text(data: bytes) -> str:
    """One article of a class folder: UTF-8 (a BOM is dropped), else Windows-1252, else Latin-1.

    Each article is its own file, so a guess here cannot rewrite another article. Older
    corpora such as BBC News hold a few cp1252 files (a bare 0xA3 for "£"), which are not
    valid UTF-8. Latin-1 never fails, so it is the last resort for the five bytes cp1252
    leaves undefined.
    """
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def decode_lines(
    data: bytes,
    *,
    file: str,
    encoding: str | None = None,
    errors: Literal["reject", "replace", "cp1252"] = "reject",
    repaired: list[RowIssue] | None = None,
    first_line: int = 1,
) -> str:
    """Bytes of a text file (CSV, JSONL, text) to str, never re-decoding valid lines.

    With ``encoding`` named, the whole file is decoded with it, strictly. Otherwise the
    file is UTF-8 (a BOM is dropped), checked line by line: a line that is not valid
    UTF-8 raises a ``DataValidationError`` naming the line and the byte offset of its first
    bad byte (``errors="reject"``), or only that line is repaired (``"replace"``: U+FFFD per
    bad byte; ``"cp1252"``: the line decoded as Windows-1252) and appended to ``repaired``.
        ``first_line`` numbers ``data``'s first line when it is a piece of a file read in chunks.
    """
    if encoding is not None:
        if codecs.lookup(encoding).name == "utf-8":
            encoding = "utf-8-sig"  # a BOM is not text
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise DataValidationError(
                "encoding",
                f"{file} is not valid {encoding}: first bad byte 0x{data[error.start]:02x} at byte offset "
                f"{error.start} (line {line}); set `encoding` on the source to the file's real encoding",
                [str(RowRef(file, line, "line"))],
            ) from None
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError:
        pass  # some line is bad: find it; UTF-8 never spans a newline, so lines decode alone
    parts: list[str] = []
    offset = start
    for number, line in enumerate(data[start:].splitlines(keepends=True), start=first_line):
        try:
            parts.append(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            where = RowRef(file, number, "line")
            bad = (
                f"first bad byte 0x{line[error.start]:02x} at byte offset {offset + error.start} "
                f"(byte {error.start + 1} of the line)"
            )
            if errors == "reject":
                raise DataValidationError(
                    "encoding",
                    f"{file} line {number} is not valid UTF-8, {bad}; fix the file, name its encoding "
                    "(`encoding: cp1252` on the source), or set `encoding_errors: replace` or "
                    "`encoding_errors: cp1252` on the source to repair only such lines",
                    [str(where)],
                ) from None
            parts.append(_repair_line(line, errors))
            issue = RowIssue(where, f"not valid UTF-8, {bad}; repaired by encoding_errors: {errors}")
            log.warning("%s", issue)
            if repaired is not None:
                repaired.append(issue)
        offset += len(line)
    return "".join(parts)


def _repair_line(line: bytes, how: str) -> str:
    if how == "replace":
        return line.decode("utf-8", errors="replace")
    try:
        return line.decode("cp1252")
    except UnicodeDecodeError:
        return line.decode("latin-1")  # the five bytes cp1252 leaves undefined


def read_text_file(
    path: Path, source: SourceSpec | None = None, repaired: list[RowIssue] | None = None
) -> str:
    """A CSV, JSONL or text file as str, with the source's encoding settings (UTF-8 by default)."""
    return decode_lines(
        Path(path).read_bytes(),
        file=Path(path).name,
        encoding=source.encoding if source else None,
        errors=source.encoding_errors if source else "reject",
        repaired=repaired,
    )
