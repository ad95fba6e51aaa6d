"""The one error type for bad input data: it always names the file, and the row or field."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

SHOWN_CHARS = 60
"""Longest value quoted in a message: hostile input can hold megabytes in one field."""


class DataError(ValueError):
    """Input data that cannot be used as given.

    ``row`` is the 1-based record number in the file (the header excluded; a quoted field with
    newlines is still one record), so users can find it with a CSV reader.
    """

    def __init__(
        self,
        file: str | Path,
        message: str,
        *,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file)
        self.row = row
        self.field = field
        self.message = message
        where = self.file
        if row is not None:
            where += f", record {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[partial[DataError], tuple[str, str]]:
        # Process pools pickle exceptions; the default rebuilds from ``args`` (the formatted
        # text alone), which does not match this constructor.
        return partial(type(self), row=self.row, field=self.field), (self.file, self.message)


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters with the full length noted."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str | bytes) else ""
    return f"{text[:limit]}...{size}"
