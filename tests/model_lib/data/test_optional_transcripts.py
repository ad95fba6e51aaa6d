"""audio_segmentation_transcripts is optional: no step reads it, so nothing there is required."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from model_lib.data.egd_cxr import read_transcripts
from model_lib.data.errors import DataError

IDS = pd.Series(["a" * 44, "b" * 44, "c" * 44])


def test_a_missing_root_reads_as_every_folder_missing(tmp_path: Path):
    transcripts, phrases = read_transcripts(tmp_path / "absent", IDS)
    assert transcripts["dir_exists"].tolist() == [False] * 3
    assert transcripts["full_text"].isna().all() and phrases.empty
    assert transcripts["missing_files"].str.contains("transcript.json").all()


def test_audio_and_masks_may_be_absent(tmp_path: Path):
    folder = tmp_path / IDS[0]
    folder.mkdir()
    text = {"full_text": "clear.", "time_stamped_text": [
        {"phrase": "clear.", "begin_time": 0.1, "end_time": 0.4}]}  # fmt: skip
    (folder / "transcript.json").write_text(json.dumps(text), encoding="utf-8")
    transcripts, phrases = read_transcripts(tmp_path, IDS)
    assert transcripts["dir_exists"].tolist() == [True, False, False]
    assert transcripts.loc[1, "missing_files"] == (
        "audio.wav;audio.mp3;left_lung.png;right_lung.png;mediastanum.png;aortic_knob.png"
    )
    assert transcripts.loc[1, "full_text"] == "clear." and len(phrases) == 1


def test_a_present_transcript_must_still_parse(tmp_path: Path):
    folder = tmp_path / IDS[1]
    folder.mkdir()
    (folder / "transcript.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        read_transcripts(tmp_path, IDS)
