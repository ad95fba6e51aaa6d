"""Writers for the EGD-CXR files: master sheet, gaze tables, boxes, transcript folders.

Floats are written with a fixed number of decimals so the bytes do not depend on the platform;
the gaze tables are streamed one screen at a time because eye_gaze.csv is the bulk of a release.
"""

from __future__ import annotations

import json
import wave
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd
from PIL import Image

from model_lib.data import schema
from model_lib.data.synth.anatomy import Box
from model_lib.data.synth.reading import DECIMALS

_INT_GAZE = {"SESSION_ID", "MEDIA_ID", "CNT", "FPOGID", "FPOGV", "BPOGV", "LPV", "RPV", "BKID",
             "BKPMIN", "LPMMV", "RPMMV", "X_ORIGINAL", "Y_ORIGINAL"}  # fmt: skip
_ONE_DECIMAL = {schema.TIMETICK_COLUMN, "VID_FRAME"}


def _gaze_format(column: str) -> str:
    """printf format of one gaze column: TIMETICK is written like 696220113269.0."""
    if column == "DICOM_ID":
        return "%s"
    if column in _INT_GAZE:
        return "%d"
    return "%.1f" if column in _ONE_DECIMAL else f"%.{DECIMALS}f"


_GAZE_FORMAT = ",".join(map(_gaze_format, schema.GAZE_COLUMNS)) + "\n"
MP3_STUB = b"ID3\x04\x00\x00\x00\x00\x00\x00"
"""audio.mp3 placeholder: an empty ID3v2.4 tag and no audio frames (the dictation is not voiced)."""
_PNG_LEVEL = 3
"""zlib level for the masks: level 6 doubles the time for a few kilobytes less."""
_WAV_RATE = 8000
_WAV_SECONDS = 0.25


class GazeTableWriter:
    """Streams fixations.csv and eye_gaze.csv (schema.GAZE_COLUMNS), one screen at a time."""

    def __init__(self, egd_root: Path) -> None:
        header = ",".join(schema.GAZE_COLUMNS) + "\n"
        self._gaze = (egd_root / "eye_gaze.csv").open("w", encoding="ascii", newline="")
        self._fixations = (egd_root / "fixations.csv").open("w", encoding="ascii", newline="")
        for f in (self._gaze, self._fixations):
            f.write(header)
        self.n_samples = 0
        self.n_fixations = 0

    def write(
        self,
        session_id: int,
        dicom_id: str,
        columns: Mapping[str, np.ndarray],
        fixation_rows: np.ndarray,
    ) -> None:
        """One screen: every sample to eye_gaze.csv, the rows ``fixation_rows`` to fixations.csv.

        ``columns`` holds every gaze column but SESSION_ID, MEDIA_ID and DICOM_ID, same length.
        """
        n = len(columns[schema.TIME_COLUMN])
        constant = {"SESSION_ID": [session_id] * n, "MEDIA_ID": [0] * n, "DICOM_ID": [dicom_id] * n}
        values = [
            constant[c] if c in constant else columns[c].tolist() for c in schema.GAZE_COLUMNS
        ]
        lines = [_GAZE_FORMAT % row for row in zip(*values, strict=True)]
        self._gaze.write("".join(lines))
        self._fixations.write("".join(lines[k] for k in fixation_rows))
        self.n_samples += n
        self.n_fixations += len(fixation_rows)

    def close(self) -> None:
        self._gaze.close()
        self._fixations.close()

    def __enter__(self) -> GazeTableWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_master_sheet(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """master_sheet.csv: schema.MASTER_SHEET_COLUMNS in order; quoted multi-line indications."""
    df = pd.DataFrame(list(rows), columns=list(schema.MASTER_SHEET_COLUMNS))
    df["stay_id"] = pd.array(df["stay_id"], dtype="Int64")
    for col in schema.CHEXPERT_COLUMNS:
        df[col] = df[col].astype("float64")
    df.to_csv(path, index=False, lineterminator="\n", encoding="utf-8")


def write_bounding_boxes(path: Path, boxes: Sequence[tuple[str, Sequence[Box]]]) -> None:
    """bounding_boxes.csv: dicom_id,bbox_name,x1,x2,y1,y2 with whole-pixel floats (1007.0)."""
    lines = [",".join(schema.BBOX_COLUMNS) + "\n"]
    for dicom_id, image_boxes in boxes:
        lines += [f"{dicom_id},{name},{x1:.1f},{x2:.1f},{y1:.1f},{y2:.1f}\n"
                  for name, x1, x2, y1, y2 in image_boxes]  # fmt: skip
    path.write_text("".join(lines), encoding="ascii")


def write_transcript_dir(
    folder: Path, transcript: Mapping[str, object], masks: Mapping[str, np.ndarray]
) -> None:
    """transcript.json, the four mask PNGs (binary 0/255, native size) and the audio stubs.

    audio.wav is a short silent stereo clip (valid RIFF/WAVE, not the reading's length) and
    audio.mp3 is :data:`MP3_STUB`: the synthetic dictation exists only as text.
    """
    folder.mkdir(parents=True)
    (folder / "transcript.json").write_text(json.dumps(transcript), encoding="utf-8")
    for name in schema.TRANSCRIPT_MASKS:
        mask = Image.fromarray(masks[name.removesuffix(".png")])
        mask.save(folder / name, format="PNG", compress_level=_PNG_LEVEL)
    with wave.open(str(folder / "audio.wav"), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(_WAV_RATE)
        wav.writeframes(bytes(int(_WAV_RATE * _WAV_SECONDS) * 4))
    (folder / "audio.mp3").write_bytes(MP3_STUB)
