"""The rows every source reader returns: column names, and where each row came from.

A row keeps its :class:`RowRef` (file and row number) through cleaning, so that a dropped
or repaired row is reported where the user can find it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TEXT = "text"
LABEL = "label"
ROW = "source_row"


@dataclass(frozen=True)
class RowRef:
    """Where a row came from: a file and its 1-based row (or line) number.

    ``number`` is None where the whole file is one row (an article of a class folder, a
    text file). CSV rows count data records after the header; JSONL rows are lines.
    """

    file: str
    number: int | None = None
    unit: Literal["row", "line"] = "row"

    def __str__(self) -> str:
        return self.file if self.number is None else f"{self.file} {self.unit} {self.number}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file} if self.number is None else {"file": self.file, self.unit: self.number}


@dataclass(frozen=True, repr=False)
class RowIssue:
    """A row that ingestion dropped or repaired, and why."""

    where: RowRef
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def __repr__(self) -> str:
        # How error messages list it (DataValidationError previews rows by repr): quoted, whole.
        return repr(str(self))

    def as_dict(self) -> dict[str, Any]:
        return {**self.where.as_dict(), "reason": self.reason}
