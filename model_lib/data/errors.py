"""The one error type for bad input data: it always names the file, and the row or field, and the
image (``dicom_id``) when it is about one."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

SHOWN_CHARS = 60
"""Longest value quoted in a message: hostile input can hold megabytes in one field."""


class DataError(ValueError):
    """Input data that cannot be used as given.

    ``row`` is the 1-based record number in the file (the header excluded; a quoted field with
    newlines is still one record), so users can find it with a CSV reader. ``dicom_id`` names the
    image a per-image failure is about (an unreadable DICOM, its master-sheet record). The text
    is one line: line breaks in ``message`` (a library's error text) become spaces.
    """

    def __init__(
        self,
        file: str | Path,
        message: str,
        *,
        row: int | None = None,
        field: str | None = None,
        dicom_id: str | None = None,
    ) -> None:
        self.file = str(file)
        self.row = row
        self.field = field
        self.dicom_id = dicom_id
        self.message = " ".join(line.strip() for line in str(message).splitlines())
        where = self.file
        if dicom_id is not None:
            where = f"image {dicom_id}: {where}"
        if row is not None:
            where += f", record {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {self.message}")

    def __reduce__(self) -> tuple[partial[DataError], tuple[str, str]]:
        # Process pools pickle exceptions; the default rebuilds from ``args`` (the formatted
        # text alone), which does not match this constructor.
        keywords = {"row": self.row, "field": self.field, "dicom_id": self.dicom_id}
        return partial(type(self), **keywords), (self.file, self.message)

    def for_image(self, dicom_id: str) -> DataError:
        """The same error, naming the image it is about."""
        return type(self)(self.file, self.message, row=self.row, field=self.field,
                          dicom_id=dicom_id)  # fmt: skip


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters with the full length noted."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str | bytes) else ""
    return f"{text[:limit]}...{size}"
