"""The synthetic release has the real layout, schemas and quirks, and its content is consistent."""

from __future__ import annotations

import hashlib
import json
import re
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from model_lib.data import geometry, schema
from model_lib.data.synth import SynthSummary, generate_dataset
from model_lib.data.synth.cohort import allocate, scaled_size
from model_lib.data.synth.tables import MP3_STUB

N_IMAGES = 42  # two calibration screens, two sessions, two two-image patients
SEED = 5


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "raw"
    return out, generate_dataset(out, N_IMAGES, seed=SEED, scale=0.1)


@pytest.fixture(scope="module")
def master(release: tuple[Path, SynthSummary]) -> pd.DataFrame:
    text_columns = ["dicom_id", *(f"dx{k}_icd" for k in range(1, 10))]
    return pd.read_csv(
        release[0] / "egd-cxr" / "master_sheet.csv", dtype=dict.fromkeys(text_columns, str)
    )


@pytest.fixture(scope="module")
def gaze(release: tuple[Path, SynthSummary]) -> pd.DataFrame:
    return pd.read_csv(release[0] / "egd-cxr" / "eye_gaze.csv", dtype={"DICOM_ID": str})


@pytest.fixture(scope="module")
def fixations(release: tuple[Path, SynthSummary]) -> pd.DataFrame:
    return pd.read_csv(release[0] / "egd-cxr" / "fixations.csv", dtype={"DICOM_ID": str})


@pytest.fixture(scope="module")
def boxes(release: tuple[Path, SynthSummary]) -> pd.DataFrame:
    return pd.read_csv(release[0] / "egd-cxr" / "bounding_boxes.csv", dtype={"dicom_id": str})


@pytest.fixture(scope="module")
def headers(release: tuple[Path, SynthSummary], master: pd.DataFrame) -> dict[str, pydicom.Dataset]:
    root = release[0] / "mimic-cxr"
    return {d: pydicom.dcmread(root / p) for d, p in zip(master.dicom_id, master.path, strict=True)}


def _header_line(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n", 1)[0].split(",")


def _native_hw(master: pd.DataFrame, headers: dict[str, pydicom.Dataset]) -> dict[str, tuple]:
    return {d: (int(headers[d].Rows), int(headers[d].Columns)) for d in master.dicom_id}


def test_layout_and_exact_column_orders(release: tuple[Path, SynthSummary]) -> None:
    out, summary = release
    egd = out / "egd-cxr"
    assert summary.egd_root == egd and summary.images_root == out / "mimic-cxr"
    assert sorted(p.name for p in out.iterdir()) == ["egd-cxr", "mimic-cxr"]
    assert tuple(_header_line(egd / "master_sheet.csv")) == schema.MASTER_SHEET_COLUMNS
    for name in ("fixations.csv", "eye_gaze.csv"):
        header = (egd / name).read_text(encoding="ascii").split("\n", 1)[0]
        assert tuple(header.split(",")) == schema.GAZE_COLUMNS
    assert tuple(_header_line(egd / "bounding_boxes.csv")) == schema.BBOX_COLUMNS
    folders = list((egd / "audio_segmentation_transcripts").iterdir())
    assert len(folders) == N_IMAGES
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == sorted(schema.TRANSCRIPT_FILES)
    dicoms = list((out / "mimic-cxr" / "files").rglob("*.dcm"))
    assert len(dicoms) == N_IMAGES
    # Nothing but the release is left beside it (the temporary build folder was renamed).
    assert [p.name for p in out.parent.iterdir()] == ["raw"]


def test_master_sheet_ids_pads_and_codes(
    master: pd.DataFrame, headers: dict[str, pydicom.Dataset], release: tuple[Path, SynthSummary]
) -> None:
    assert len(master) == N_IMAGES
    assert master.dicom_id.is_unique and master.dicom_id.str.match(schema.DICOM_ID_RE).all()
    for row in master.itertuples():
        m = schema.MASTER_PATH_RE.match(row.path)
        assert m and (int(m[1]), int(m[2]), m[3]) == (row.patient_id, row.study_id, row.dicom_id)
        assert (release[0] / "mimic-cxr" / row.path).is_file()
        pads = tuple(getattr(row, c) for c in schema.PAD_COLUMNS)
        assert pads == geometry.display_pads(
            (headers[row.dicom_id].Rows, headers[row.dicom_id].Columns)
        )
    assert master.patient_id.between(10_000_000, 19_999_999).all()
    assert master.study_id.between(50_000_000, 59_999_999).all()
    assert master.stay_id.isna().any() and master.stay_id.dropna().between(1e7, 1e8 - 1).all()
    assert set(master.gender) <= {"F", "M"} and set(master.anchor_age) <= set(schema.AGE_BINS)
    codes = pd.Series(master[[f"dx{k}_icd" for k in range(1, 10)]].to_numpy().ravel()).dropna()
    assert codes.str.match(schema.ICD_RE).all()
    assert codes.str.match(r"^[A-Z]").any() and codes.str.match(r"^\d{3}").any()
    chf = master[master.CHF == 1].dx1_icd.astype(str)
    assert chf.str.match(r"^(428|402|I50|I11)").all()
    pna = master[master.pneumonia == 1].dx1_icd.astype(str)
    assert pna.str.match(r"^(48[1-6]|J1[58])").all()
    for col in schema.CHEXPERT_COLUMNS:
        assert set(master[col].dropna()) <= {1.0, 0.0, -1.0}
    assert master[list(schema.CHEXPERT_COLUMNS)].isna().any().any()
    # Report labels follow the class findings; normal_reports agrees with Normal mostly.
    assert master.loc[master.pneumonia == 1, "consolidation"].mean() > 0.5
    assert master.loc[master.Normal == 1, "consolidation"].sum() == 0
    assert (master.normal_reports == master.Normal).mean() > 0.7


def test_classes_one_hot_and_balanced(master: pd.DataFrame, release: tuple) -> None:
    labels = master[list(schema.LABEL_COLUMNS)]
    assert (labels.sum(axis=1) == 1).all()
    counts = labels.sum().to_numpy()
    assert counts.max() - counts.min() <= 1
    assert dict(release[1].class_counts) == dict(
        zip(schema.CLASS_NAMES, counts.tolist(), strict=True)
    )


def test_multi_image_patients_and_studies(master: pd.DataFrame) -> None:
    per_patient = master.groupby("patient_id")
    multi = per_patient.filter(lambda g: len(g) >= 2)
    assert multi.patient_id.nunique() >= 2
    assert (per_patient.gender.nunique() == 1).all() and (
        per_patient.anchor_age.nunique() == 1
    ).all()
    studies = multi.groupby("patient_id").study_id.nunique()
    assert (studies == 1).any() and (studies > 1).any()  # one study, and two studies
    # Images of one study share the class, the diagnoses and the report-derived labels.
    same_study = master.groupby("study_id").filter(lambda g: len(g) >= 2)
    shared = [*schema.LABEL_COLUMNS, *schema.DX_COLUMNS, *schema.REPORT_LABEL_COLUMNS,
              *schema.CHEXPERT_COLUMNS, "cxr_exam_indication", "stay_id"]  # fmt: skip
    assert len(same_study) >= 2
    assert (same_study.groupby("study_id")[shared].nunique(dropna=False) == 1).all().all()


def test_indications_parse_as_records(
    release: tuple[Path, SynthSummary], master: pd.DataFrame
) -> None:
    text = (release[0] / "egd-cxr" / "master_sheet.csv").read_text(encoding="utf-8")
    assert text.count("\n") > N_IMAGES + 1  # physical lines exceed records
    indications = master.cxr_exam_indication
    assert indications.str.contains("\n").any()
    assert indications.str.contains(",").any() and indications.str.contains('"').any()
    assert indications.str.contains("___").mean() > 0.5


def test_gaze_original_coordinates_follow_the_released_formula(
    gaze: pd.DataFrame,
    fixations: pd.DataFrame,
    master: pd.DataFrame,
    headers: dict[str, pydicom.Dataset],
) -> None:
    hw = _native_hw(master, headers)
    for table in (gaze, fixations):
        for dicom_id, rows in table.groupby("DICOM_ID"):
            if len(dicom_id) == schema.CALIBRATION_ID_LENGTH:
                pads, native = (0, 0, 0, 0), (1080, 1920)
            else:
                native = hw[dicom_id]
                pads = geometry.display_pads(native)
            x, y = geometry.screen_to_native(
                rows.FPOGX.to_numpy(), rows.FPOGY.to_numpy(), pads, native
            )
            np.testing.assert_array_equal(x, rows.X_ORIGINAL.to_numpy())
            np.testing.assert_array_equal(y, rows.Y_ORIGINAL.to_numpy())
    # Outside the shown image both coordinates leave the image together (at this small scale the
    # release's truncation towards zero makes them 0; see the next test for real sizes).
    outside = (fixations.X_ORIGINAL <= 0) & (fixations.Y_ORIGINAL <= 0)
    assert outside.sum() >= N_IMAGES // 2
    assert ((fixations.X_ORIGINAL < 0) == (fixations.Y_ORIGINAL < 0)).all()
    fpog = gaze[["FPOGX", "FPOGY"]]
    off_screen = ((fpog < 0) | (fpog > 1)).any(axis=1)
    assert off_screen.any() and off_screen.mean() < 0.01


def test_off_image_fixations_are_negative_pairs_at_real_sizes(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "raw", 4, seed=1, scale=0.5).egd_root
    fixations = pd.read_csv(out / "fixations.csv")
    negative = fixations.X_ORIGINAL < 0
    assert negative.any() and (negative == (fixations.Y_ORIGINAL < 0)).all()
    assert fixations.loc[negative, ["X_ORIGINAL", "Y_ORIGINAL"]].ge(-3).all().all()


def test_gaze_clocks_and_blocks(
    gaze: pd.DataFrame, fixations: pd.DataFrame, master: pd.DataFrame
) -> None:
    assert (gaze.MEDIA_ID == 0).all() and (gaze.VID_FRAME == 0.0).all()
    for col in schema.VALIDITY_COLUMNS:
        assert set(gaze[col]) <= {0, 1}
    assert (gaze.BPOGV == 0).any()  # blinks
    # Each screen is one contiguous block of its session.
    block = gaze.DICOM_ID.ne(gaze.DICOM_ID.shift()).cumsum()
    assert block.max() == gaze.DICOM_ID.nunique()
    assert (gaze.groupby(block).SESSION_ID.nunique() == 1).all()
    assert set(master.dicom_id) <= set(gaze.DICOM_ID)
    for _, rows in gaze.groupby(block):
        t = rows["Time (in secs)"].to_numpy()
        tick = rows[schema.TIMETICK_COLUMN].to_numpy()
        assert t[0] < 0.1 and (np.diff(t) >= 0).all()
        assert (np.diff(rows.CNT) >= 1).all() and (np.diff(rows.FPOGID) >= 0).all()
        assert np.abs(np.diff(tick) / 1e7 - np.diff(t)).max() < 2e-3
        if len(t) > 200:
            assert 55 < (rows.CNT.iloc[-1] - rows.CNT.iloc[0]) / (t[-1] - t[0]) < 65
    for _, rows in gaze.groupby("SESSION_ID"):
        assert (np.diff(rows[schema.TIMETICK_COLUMN]) > 0).all()
    # fixations.csv: the last sample of each fixation, also present in eye_gaze.csv.
    total = fixations.FPOGS + fixations.FPOGD
    assert np.abs(fixations["Time (in secs)"] - total).max() < 1e-4
    assert (fixations.FPOGD > 0).all() and (fixations.FPOGV == 1).all()
    assert not fixations.duplicated(["DICOM_ID", "FPOGID"]).any()
    merged = fixations.merge(gaze, on=["DICOM_ID", "CNT"], suffixes=("", "_gaze"))
    assert len(merged) == len(fixations)
    assert (merged["Time (in secs)"] == merged["Time (in secs)_gaze"]).all()


def test_timetick_written_like_the_release(release: tuple[Path, SynthSummary]) -> None:
    line = (release[0] / "egd-cxr" / "fixations.csv").read_text(encoding="ascii").split("\n")[1]
    tick = line.split(",")[schema.GAZE_COLUMNS.index(schema.TIMETICK_COLUMN)]
    assert re.fullmatch(r"\d{11,13}\.0", tick)


def test_calibration_screens_follow_every_20th_image(
    gaze: pd.DataFrame, master: pd.DataFrame
) -> None:
    screens = gaze.loc[gaze.DICOM_ID.ne(gaze.DICOM_ID.shift()), "DICOM_ID"].tolist()
    calibration = [k for k, d in enumerate(screens) if len(d) == schema.CALIBRATION_ID_LENGTH]
    assert len(calibration) == N_IMAGES // 20
    for k in calibration:
        shown_before = k - sum(1 for c in calibration if c < k)
        assert shown_before % 20 == 0
        assert screens[k - 1].startswith(screens[k]) and screens[k - 1] in set(master.dicom_id)
    rows = gaze[gaze.DICOM_ID.str.len() == schema.CALIBRATION_ID_LENGTH]
    assert np.abs(rows[["FPOGX", "FPOGY"]].mean() - 0.5).max() < 0.05
    assert rows.X_ORIGINAL.between(860, 1060).mean() > 0.9  # screen pixels, not image pixels
    assert rows.Y_ORIGINAL.between(440, 640).mean() > 0.9


def test_dicoms_are_12_bit_dx_with_both_photometrics(
    release: tuple[Path, SynthSummary], master: pd.DataFrame, headers: dict[str, pydicom.Dataset]
) -> None:
    photometric, windows, shapes = set(), set(), []
    for row in master.itertuples():
        ds = headers[row.dicom_id]
        path = release[0] / "mimic-cxr" / row.path
        assert path.read_bytes()[128:132] == b"DICM"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" and ds.Modality == "DX"
        assert ds.ViewPosition == "PA" and ds.PatientID == str(row.patient_id)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16,
            12,
            11,
            0,
        )
        assert str(ds.PatientName) in ("", "___")
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) and int(pixels.max()) <= 4095
        photometric.add(ds.PhotometricInterpretation)
        centre = ds.get("WindowCenter")
        windows.add(
            "none"
            if centre is None
            else "multi"
            if isinstance(centre, pydicom.multival.MultiValue)
            else "single"
        )
        shapes.append((ds.Rows, ds.Columns))
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert windows == {"none", "single", "multi"}
    assert any(w > h for h, w in shapes) and any(h % 2 or w % 2 for h, w in shapes)
    assert len({ds.SOPInstanceUID for ds in headers.values()}) == N_IMAGES


def test_monochrome1_must_be_inverted(
    release: tuple[Path, SynthSummary], master: pd.DataFrame, headers: dict[str, pydicom.Dataset]
) -> None:
    """A reader that inverts MONOCHROME1 sees dark lungs and a bright mediastinum in every image."""
    folder = release[0] / "egd-cxr" / "audio_segmentation_transcripts"
    for dicom_id, ds in headers.items():
        pixels = ds.pixel_array.astype(float)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            pixels = 4095 - pixels
        lungs = np.asarray(Image.open(folder / dicom_id / "right_lung.png")) > 0
        mediastinum = np.asarray(Image.open(folder / dicom_id / "mediastanum.png")) > 0
        assert pixels[lungs].mean() < pixels[mediastinum].mean()


def test_boxes_and_masks_match_the_image(
    release: tuple[Path, SynthSummary],
    boxes: pd.DataFrame,
    master: pd.DataFrame,
    headers: dict[str, pydicom.Dataset],
) -> None:
    text = (release[0] / "egd-cxr" / "bounding_boxes.csv").read_text(encoding="ascii")
    assert re.search(r",\d+\.0,\d+\.0,\d+\.0,\d+\.0\n", text)
    hw = _native_hw(master, headers)
    folder = release[0] / "egd-cxr" / "audio_segmentation_transcripts"
    for dicom_id, rows in boxes.groupby("dicom_id"):
        assert sorted(rows.bbox_name) == sorted(schema.BBOX_NAMES)
        h, w = hw[dicom_id]
        assert (rows.x1 >= 0).all() and (rows.x1 < rows.x2).all() and (rows.x2 <= w).all()
        assert (rows.y1 >= 0).all() and (rows.y1 < rows.y2).all() and (rows.y2 <= h).all()
        for name in schema.TRANSCRIPT_MASKS:
            mask = Image.open(folder / dicom_id / name)
            assert mask.mode == "L" and mask.size == (w, h)
            values = np.unique(np.asarray(mask))
            assert set(values.tolist()) == {0, 255}
        lung = np.asarray(Image.open(folder / dicom_id / "left_lung.png")) > 0
        ys, xs = np.nonzero(lung)
        box = rows.set_index("bbox_name").loc["left lung"]
        assert (
            box.x1 <= xs.min() and xs.max() <= box.x2 and box.y1 <= ys.min() and ys.max() <= box.y2
        )
        # Patient's left is on the image's right in a PA view.
        right = rows.set_index("bbox_name").loc["right lung"]
        assert right.x2 < box.x2 and right.x1 < box.x1
    assert len(boxes) == 17 * N_IMAGES


def test_transcripts_and_audio_stubs(
    release: tuple[Path, SynthSummary], master: pd.DataFrame
) -> None:
    folder = release[0] / "egd-cxr" / "audio_segmentation_transcripts"
    for row in master.itertuples():
        data = json.loads((folder / row.dicom_id / "transcript.json").read_text(encoding="utf-8"))
        assert set(data) == {"full_text", "time_stamped_text"} and data["full_text"].strip()
        items = data["time_stamped_text"]
        begins = [p["begin_time"] for p in items]
        assert begins == sorted(begins) and all(p["begin_time"] <= p["end_time"] for p in items)
        assert " ".join(p["phrase"] for p in items) == data["full_text"]
        if row.CHF:
            assert "heart failure" in data["full_text"]
        if row.pneumonia:
            assert re.search(
                r"consolidation in the (left|right) (upper|mid|lower) lung zone", data["full_text"]
            )
        with wave.open(str(folder / row.dicom_id / "audio.wav"), "rb") as wav:
            assert wav.getnchannels() == 2 and wav.getnframes() > 0
        assert (folder / row.dicom_id / "audio.mp3").read_bytes() == MP3_STUB


def test_gaze_dwells_on_the_findings(
    release: tuple[Path, SynthSummary],
    master: pd.DataFrame,
    gaze: pd.DataFrame,
    boxes: pd.DataFrame,
    headers: dict[str, pydicom.Dataset],
) -> None:
    """Gaze sample density is higher on the finding than elsewhere: for pneumonia the zone named
    in the dictation vs the same zone of the other lung, for CHF the heart vs the rest."""
    folder = release[0] / "egd-cxr" / "audio_segmentation_transcripts"
    box = boxes.set_index(["dicom_id", "bbox_name"])

    def count(points: pd.DataFrame, b: pd.Series) -> int:
        inside = points.X_ORIGINAL.between(b.x1, b.x2) & points.Y_ORIGINAL.between(b.y1, b.y2)
        return int(inside.sum())

    def area(b: pd.Series) -> float:
        return float((b.x2 - b.x1) * (b.y2 - b.y1))

    abnormal = master[master.Normal == 0]
    for row in abnormal.itertuples():
        points = gaze[gaze.DICOM_ID.eq(row.dicom_id) & (gaze.X_ORIGINAL >= 0)]
        if row.pneumonia:
            text = json.loads((folder / row.dicom_id / "transcript.json").read_text())["full_text"]
            side, zone = re.search(r"(left|right) (upper|mid|lower) lung zone", text).groups()
            other = "left" if side == "right" else "right"
            finding = box.loc[(row.dicom_id, f"{side} {zone} lung zone")]
            mirror = box.loc[(row.dicom_id, f"{other} {zone} lung zone")]
            assert count(points, finding) / area(finding) > count(points, mirror) / area(mirror)
        else:
            heart = box.loc[(row.dicom_id, "cardiac silhouette")]
            image_area = float(headers[row.dicom_id].Rows * headers[row.dicom_id].Columns)
            rest = (len(points) - count(points, heart)) / (image_area - area(heart))
            assert count(points, heart) / area(heart) > rest
    assert len(abnormal) >= N_IMAGES // 2


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = _tree_digest(generate_dataset(tmp_path / "a", 4, seed=11, scale=0.05).egd_root.parent)
    again = _tree_digest(generate_dataset(tmp_path / "b", 4, seed=11, scale=0.05).egd_root.parent)
    assert first == again and len(first) > 4 * 8
    other = _tree_digest(generate_dataset(tmp_path / "c", 4, seed=12, scale=0.05).egd_root.parent)
    assert other["egd-cxr/master_sheet.csv"] != first["egd-cxr/master_sheet.csv"]
    assert other["egd-cxr/eye_gaze.csv"] != first["egd-cxr/eye_gaze.csv"]


def test_refuses_a_non_empty_folder_and_overwrites_on_request(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"raw.*not empty.*overwrite=True"):
        generate_dataset(out, 3, scale=0.05)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]
    generate_dataset(out, 3, scale=0.05, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["egd-cxr", "mimic-cxr"]
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_dataset(empty, 3, scale=0.05)
    assert (empty / "egd-cxr" / "master_sheet.csv").is_file()


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_lib.data.synth import generate

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(generate, "write_bounding_boxes", broken)
    with pytest.raises(OSError, match="disk full"):
        generate_dataset(tmp_path / "raw", 3, scale=0.05)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_images": 0}, "n_images"),
        ({"n_images": 3, "scale": 0.0}, "scale"),
        ({"n_images": 3, "scale": 1.5}, "scale"),
        ({"n_images": 3, "seed": -1}, "seed"),
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path / "raw", **kwargs)
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("native", "scale", "expected"),
    [
        ((3056, 2544), 1.0, (3056, 2544)),
        ((3056, 2544), 0.25, (764, 636)),
        ((3050, 2539), 0.25, (762, 635)),
        ((3050, 2539), 0.1, (304, 253)),
        ((2021, 2021), 0.1, (203, 203)),
        ((1449, 1420), 0.001, (17, 16)),
    ],
)
def test_scaled_size_keeps_parity(native: tuple, scale: float, expected: tuple) -> None:
    assert scaled_size(native, scale) == expected


def test_allocate_is_near_even_and_covers_every_category() -> None:
    rng = np.random.default_rng(0)
    counts = np.bincount(allocate(10, np.ones(3), rng), minlength=3)
    assert sorted(counts.tolist()) == [3, 3, 4]
    rare = np.bincount(allocate(8, np.array([0.9, 0.1]), rng, each=True), minlength=2)
    assert rare.tolist() == [7, 1]
