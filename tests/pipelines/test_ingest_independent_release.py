"""`cxrgaze ingest` on an EGD-CXR tree written here, from the published schema alone.

The writer below does not use ``model_lib.data.synth``, ``schema`` or ``geometry``: it restates
datasets.md (1.2 tree, 1.3 master sheet, 1.4 gaze columns, 1.6 transcripts, 1.10 letterbox pads
and the released screen -> X/Y_ORIGINAL mapping, 4.1 paths) so that something we did not write
has to agree with the ingest step. Like a real download, it has off-screen eye-tracker samples
(FPOG/BPOG outside [0, 1], about 2 %), gaze on the display padding, and no audio or mask files.

Images are about a third of real size: big enough that the released mapping still turns an
off-image point into a negative X/Y_ORIGINAL (on smaller images it truncates to 0).
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from pipelines.cli import app
from tests.pipelines.test_cli_data import ingest

runner = CliRunner()

MASTER_COLUMNS = [
    "dicom_id", "path", "study_id", "patient_id", "stay_id", "gender", "anchor_age",
    "image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad",
    *(name for k in range(1, 10) for name in (f"dx{k}", f"dx{k}_icd")),
    "normal_reports", "Normal", "CHF", "pneumonia",
    "consolidation", "enlarged_cardiac_silhouette", "linear__patchy_atelectasis",
    "lobar__segmental_collapse", "not_otherwise_specified_opacity___pleural__parenchymal_opacity__",
    "pleural_effusion_or_thickening", "pulmonary_edema__hazy_opacity", "normal_anatomically",
    "elevated_hemidiaphragm", "hyperaeration", "vascular_redistribution",
    "atelectasis__chx", "cardiomegaly__chx", "consolidation__chx", "edema__chx",
    "enlarged_cardiomediastinum__chx", "fracture__chx", "lung_lesion__chx", "lung_opacity__chx",
    "no_finding__chx", "pleural_effusion__chx", "pleural_other__chx", "pneumonia__chx",
    "pneumothorax__chx", "support_devices__chx",
    "cxr_exam_indication",
]  # fmt: skip
GAZE_COLUMNS = [
    "SESSION_ID", "MEDIA_ID", "DICOM_ID", "CNT", "Time (in secs)", "TIMETICK(f=10000000)",
    "FPOGX", "FPOGY", "FPOGS", "FPOGD", "FPOGID", "FPOGV", "BPOGX", "BPOGY", "BPOGV",
    "LPCX", "LPCY", "LPD", "LPS", "LPV", "RPCX", "RPCY", "RPD", "RPS", "RPV",
    "BKID", "BKDUR", "BKPMIN", "LPMM", "LPMMV", "RPMM", "RPMMV",
    "SACCADE_MAG", "SACCADE_DIR", "VID_FRAME", "X_ORIGINAL", "Y_ORIGINAL",
]  # fmt: skip
SCREEN_W, SCREEN_H = 1920, 1080  # the eye-tracking monitor
CANVAS_W, CANVAS_H = 1920, 1024  # the letterbox canvas the PNG was padded to
HZ = 60.0
FIXATIONS_PER_IMAGE = 16
SIZES = [(1100, 916), (916, 1100), (1101, 917), (1100, 916)]  # (Rows, Columns), portrait/landscape
CLASSES = ["Normal", "CHF", "pneumonia"]
OFFSCREEN_SHARE = 0.02


@dataclass(frozen=True)
class Image:
    dicom_id: str
    patient: int
    study: int
    rows: int
    cols: int
    label: str

    @property
    def path(self) -> str:
        subject = f"{self.patient:08d}"
        return f"files/p{subject[:2]}/p{subject}/s{self.study:08d}/{self.dicom_id}.dcm"

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of image_preparation.resize_pad (datasets.md 1.10)."""
        ratio = CANVAS_H / max(self.rows, self.cols)
        h, w = int(self.rows * ratio), int(self.cols * ratio)
        left = (CANVAS_W - w) // 2
        top = (CANVAS_H - h) // 2
        return top, CANVAS_H - h - top, left, CANVAS_W - w - left

    def original(self, fpog_x: float, fpog_y: float) -> tuple[int, int]:
        """X/Y_ORIGINAL as the release maps a screen point (calibration off)."""
        top, bottom, left, right = self.pads
        eye_x, eye_y = fpog_x * SCREEN_W, fpog_y * SCREEN_H
        inside = left < eye_x < SCREEN_W - right and top < eye_y < SCREEN_H - bottom
        x_shown, y_shown = (eye_x - left, eye_y - top) if inside else (-1.0, -1.0)
        h_even, w_even = self.rows + self.rows % 2, self.cols + self.cols % 2
        return (int(w_even / (SCREEN_W - left - right) * x_shown),
                int(h_even / (SCREEN_H - top - bottom) * y_shown))  # fmt: skip

    def shown_fractions(self) -> tuple[float, float, float, float]:
        """The screen fractions (x0, x1, y0, y1) the shown image covers."""
        top, bottom, left, right = self.pads
        return (left / SCREEN_W, (SCREEN_W - right) / SCREEN_W, top / SCREEN_H,
                (SCREEN_H - bottom) / SCREEN_H)  # fmt: skip


def make_images(rng: np.random.Generator) -> list[Image]:
    """12 images of 10 patients: patient 0 has two studies, patient 1 one study of two images."""
    ids = ["-".join(f"{v:08x}" for v in rng.integers(0, 16**8, 5)) for _ in range(12)]
    patients = [int(p) for p in rng.choice(np.arange(10_000_000, 19_999_999), 10, replace=False)]
    owners = [0, 0, 1, 1, *range(2, 10)]
    studies = [50_000_000 + 1_000 * k for k in range(12)]
    studies[3] = studies[2]  # patient 1: one study, two frontal images
    return [Image(ids[k], patients[owners[k]], studies[k], *SIZES[k % len(SIZES)],
                  CLASSES[k % 3]) for k in range(12)]  # fmt: skip


def write_master(path: Path, images: list[Image]) -> None:
    dx = [("CONGESTIVE HEART FAILURE, UNSPEC", "428"), ("Heart failure, unspecified", "I50.9"),
          ("PNEUMONIA, ORGANISM NOS", "486"), ("Pneumonia, unspecified organism", "J18.9"),
          ("CHEST PAIN NOS", "786.50"), ("Viral infection, unspecified", "79.99")]  # fmt: skip
    ages = ["20 - 30", "30 - 40", "40 - 50", "50 - 60", "60 - 70", "70 - 80"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MASTER_COLUMNS)
        for k, image in enumerate(images):
            row = dict.fromkeys(MASTER_COLUMNS, "")
            row |= {"dicom_id": image.dicom_id, "path": image.path, "study_id": image.study,
                    "patient_id": image.patient, "stay_id": "" if k % 4 == 3 else 30_000_000 + k,
                    "gender": "FM"[k % 2], "anchor_age": ages[k % 6],
                    "dx1": dx[k % 6][0], "dx1_icd": dx[k % 6][1],
                    "dx2": dx[(k + 1) % 6][0] if k % 3 == 0 else "",
                    "dx2_icd": dx[(k + 1) % 6][1] if k % 3 == 0 else "",
                    "normal_reports": int(image.label == "Normal"),
                    "cxr_exam_indication": "___M with cough, fever\n// ?pna" if k % 2 else
                    "History: ___F with SOB"}  # fmt: skip
            row |= dict(zip(["image_top_pad", "image_bottom_pad", "image_left_pad",
                             "image_right_pad"], image.pads, strict=True))  # fmt: skip
            row |= {c: int(c == image.label) for c in CLASSES}
            for i, col in enumerate(MASTER_COLUMNS[33:44]):
                row[col] = int((i + k) % 7 == 0)
            for i, col in enumerate(MASTER_COLUMNS[44:58]):
                row[col] = ["1.0", "0.0", "-1.0", ""][(i + k) % 4]
            writer.writerow([row[c] for c in MASTER_COLUMNS])


def write_dicom(path: Path, image: Image, rng: np.random.Generator) -> None:
    yy, xx = np.mgrid[0 : image.rows, 0 : image.cols]
    pixels = (1500 + 1000 * np.sin(yy / 90.0) * np.cos(xx / 70.0)
              + rng.integers(0, 200, (image.rows, image.cols)))  # fmt: skip
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.StudyID = "___", str(image.patient), str(image.study)
    ds.StudyDate = "21800506"  # MIMIC shifts dates into 2100-2200
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.Rows, ds.Columns = image.rows, image.cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = np.clip(pixels, 0, 4095).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _screen_point(image: Image, rng: np.random.Generator, *, on_image: bool) -> tuple[float, float]:
    x0, x1, y0, y1 = image.shown_fractions()
    if on_image:
        margin = 0.2 * (x1 - x0)
        return rng.uniform(x0 + margin, x1 - margin), rng.uniform(y0 + 0.05, y1 - 0.05)
    # On the letterbox padding (on screen, beside the image); portrait images pad left/right.
    return (x0 / 2, 0.5) if x0 > 0.05 else (0.5, y0 / 2)


def gaze_row(
    session: int,
    dicom_id: str,
    cnt: int,
    t: float,
    clock: float,
    fixation: int,
    start: float,
    duration: float,
    fpog: tuple,
    bpog: tuple,
    xy: tuple,
) -> list:
    """One Gazepoint row; ``clock`` is the session time (s) at which this screen's Time is 0."""
    values = {"SESSION_ID": session, "MEDIA_ID": 0, "DICOM_ID": dicom_id, "CNT": cnt,
              "Time (in secs)": f"{t:.5f}", "TIMETICK(f=10000000)": f"{round((clock + t) * 1e7)}.0",
              "FPOGX": f"{fpog[0]:.5f}", "FPOGY": f"{fpog[1]:.5f}", "FPOGS": f"{start:.5f}",
              "FPOGD": f"{duration:.5f}", "FPOGID": fixation, "FPOGV": 1,
              "BPOGX": f"{bpog[0]:.5f}", "BPOGY": f"{bpog[1]:.5f}", "BPOGV": 1,
              "LPCX": 0.3775, "LPCY": 0.5512, "LPD": 17.93, "LPS": 1.0607, "LPV": 1,
              "RPCX": 0.6012, "RPCY": 0.5490, "RPD": 18.1, "RPS": 1.0611, "RPV": 1,
              "BKID": 0, "BKDUR": 0.0, "BKPMIN": 19, "LPMM": 3.73, "LPMMV": 1, "RPMM": 3.78,
              "RPMMV": 1, "SACCADE_MAG": 55.61, "SACCADE_DIR": 106.14, "VID_FRAME": 0.0,
              "X_ORIGINAL": xy[0], "Y_ORIGINAL": xy[1]}  # fmt: skip
    return [values[c] for c in GAZE_COLUMNS]


def gaze_tables(
    images: list[Image], seed: int, offscreen: dict[int, float]
) -> tuple[list[list], list[list]]:
    """(fixations.csv rows, eye_gaze.csv rows), with a calibration screen after image 5.

    Each image: 16 fixations and one sample per 1/60 s. ``offscreen[k]`` is the share of image
    k's samples and fixations that look below the screen; without it, about 2 % of an image's
    samples do, and one fixation of images 1, 5 and 9. One fixation of every third image lands
    on the display padding, beside the image.
    """
    rng = np.random.default_rng(seed)
    fixations, samples = [], []
    clock, cnt = 1_000.0, 0
    for k, image in enumerate(images):
        session = 1 if k < 6 else 2
        starts = 0.05 + np.cumsum(rng.uniform(0.15, 0.3, FIXATIONS_PER_IMAGE))
        durations = rng.uniform(0.1, 0.12, FIXATIONS_PER_IMAGE)
        points = [_screen_point(image, rng, on_image=not (j == 3 and k % 3 == 0))
                  for j in range(FIXATIONS_PER_IMAGE)]  # fmt: skip
        off_fixations = set(range(round(offscreen.get(k, 0.0) * FIXATIONS_PER_IMAGE)))
        if k in (1, 5, 9) and k not in offscreen:
            off_fixations = {7}
        times = np.arange(starts[0], starts[-1] + durations[-1], 1 / HZ)
        n_off = round(offscreen.get(k, OFFSCREEN_SHARE) * len(times))
        off_samples = set(rng.choice(len(times), n_off, replace=False).tolist())

        def looked(fix: int, off: bool, points=points) -> tuple[tuple, tuple]:
            """(FPOG, BPOG) as written: 5 decimals, which X/Y_ORIGINAL are mapped from."""
            fpog = (points[fix][0], 1.0 + rng.uniform(0.01, 0.08)) if off else points[fix]
            bpog = fpog if off else np.clip(np.asarray(fpog) + rng.normal(0, 0.003, 2), 0, 1)
            return tuple(round(float(v), 5) for v in fpog), tuple(round(float(v), 5) for v in bpog)

        for i, t in enumerate(times):
            fix = int(np.searchsorted(starts, t + 1e-9, side="right")) - 1
            cnt += 1
            fpog, bpog = looked(fix, i in off_samples)
            duration = min(t - starts[fix], durations[fix])
            samples.append(gaze_row(session, image.dicom_id, cnt, t, clock, fix, starts[fix],
                                    duration, fpog, bpog, image.original(*fpog)))  # fmt: skip
        for fix in range(FIXATIONS_PER_IMAGE):
            fpog, bpog = looked(fix, fix in off_fixations)
            fixations.append(gaze_row(session, image.dicom_id, cnt, starts[fix] + durations[fix],
                                      clock, fix, starts[fix], durations[fix], fpog, bpog,
                                      image.original(*fpog)))  # fmt: skip
        clock += times[-1] + 3.0
        if k == 5:
            # A calibration screen: the id truncated to 39 characters, gaze at the centre of a
            # blank 1920x1080 "image" without pads, so X/Y_ORIGINAL are screen pixels.
            for j in range(20):
                cnt += 1
                t = 0.05 + j / HZ
                row = gaze_row(session, image.dicom_id[:39], cnt, t, clock, 0, 0.05, t - 0.05,
                               (0.5, 0.5), (0.5, 0.5), (960, 540))  # fmt: skip
                samples.append(row)
            fixations.append(row)
            clock += 3.0
    return fixations, samples


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_gaze(egd: Path, images: list[Image], offscreen: dict[int, float]) -> None:
    fixations, samples = gaze_tables(images, seed=11, offscreen=offscreen)
    write_csv(egd / "fixations.csv", GAZE_COLUMNS, fixations)
    write_csv(egd / "eye_gaze.csv", GAZE_COLUMNS, samples)


def write_release(raw: Path) -> list[Image]:
    """raw/egd-cxr (the PhysioNet tree, no audio or masks) + raw/mimic-cxr (the DICOMs)."""
    rng = np.random.default_rng(2024)
    images = make_images(rng)
    egd, mimic = raw / "egd-cxr", raw / "mimic-cxr"
    egd.mkdir(parents=True)
    write_master(egd / "master_sheet.csv", images)
    write_gaze(egd, images, offscreen={})
    names = ["cardiac silhouette", "left clavicle", "left costophrenic angle", "trachea"]
    boxes = [[image.dicom_id, name, float(10 + 5 * j), float(image.cols - 20 - 7 * j),
              float(30 + 3 * j), float(image.rows - 40 - j)]
             for image in images for j, name in enumerate(names)]  # fmt: skip
    write_csv(egd / "bounding_boxes.csv", ["dicom_id", "bbox_name", "x1", "x2", "y1", "y2"], boxes)
    for k, image in enumerate(images):
        if k == 10:
            continue  # one transcript folder not downloaded at all
        folder = egd / "audio_segmentation_transcripts" / image.dicom_id
        folder.mkdir(parents=True)
        words = ["No", "acute", "cardiopulmonary", "process."]
        phrases = [{"phrase": w, "begin_time": 0.4 * j + 0.1, "end_time": 0.4 * j + 0.45}
                   for j, w in enumerate(words)]  # fmt: skip
        text = {"full_text": " ".join(words), "time_stamped_text": phrases}
        (folder / "transcript.json").write_text(json.dumps(text), encoding="utf-8")
    for image in images:
        write_dicom(mimic / image.path, image, rng)
    return images


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Image]]:
    raw = tmp_path_factory.mktemp("independent") / "raw"
    return raw, write_release(raw)


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  native_scale: 0.36\n  geometry:\n    target_hw: [80, 64]\n",
                    encoding="utf-8")  # fmt: skip
    return path


def copy_release(written: tuple[Path, list[Image]], tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(written[0], raw)
    return raw


def offscreen_rows(path: Path) -> tuple[int, int]:
    """(rows with FPOG or BPOG outside [0, 1], image rows) of a gaze CSV, counted here."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if len(r["DICOM_ID"]) == 44]
    off = sum(any(not 0 <= float(r[c]) <= 1 for c in ("FPOGX", "FPOGY", "BPOGX", "BPOGY"))
              for r in rows)  # fmt: skip
    return off, len(rows)


def test_release_with_real_quirks_ingests_with_warnings(written, params: Path, tmp_path: Path):
    raw = copy_release(written, tmp_path)
    store = tmp_path / "store"
    result = ingest(raw, store, params)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("WARNING")]
    # One line per warning: off-screen samples and gaze on the padding of both gaze files, the
    # folders without audio or masks, the folder that is missing altogether.
    between = "expect_column_values_to_be_between"
    in_set = "audio_segmentation_transcripts: expect_column_values_to_be_in_set"
    expected = [f"{file} per image: {between}({kind}_fraction)"
                for file in ("fixations.csv", "eye_gaze.csv")
                for kind in ("offscreen", "outside_image")]  # fmt: skip
    expected += [f"{in_set}(dir_exists)", f"{in_set}(missing_files)"]
    found = [next((e for e in expected if e in w), w) for w in warnings]
    assert sorted(found) == sorted(expected), "\n".join(warnings)
    off, total = offscreen_rows(raw / "egd-cxr" / "eye_gaze.csv")
    assert 0.01 < off / total < 0.03
    line = next(w for w in warnings if "eye_gaze.csv per image" in w and "(offscreen_" in w)
    assert f"-- {off:,} of {total:,} samples ({off / total:.1%}) are off screen" in line
    assert "12 of 12 images unexpected" in line and "'offscreen_fraction': 0.0" in line
    assert f"({len(warnings)} warning(s))" in result.output

    report = json.loads((store / "validation.json").read_text(encoding="utf-8"))
    assert report["success"] is True and report["errors"] == []
    found = {(w["suite"], *w["columns"]): w for w in report["warnings"]}
    gaze = found["eye_gaze.csv per image", "offscreen_fraction"]
    assert gaze["severity"] == "warning" and gaze["unexpected_count"] == 12
    assert all(0 < e["offscreen_fraction"] < 0.1 for e in gaze["examples"])
    fixations = found["fixations.csv per image", "offscreen_fraction"]
    assert fixations["unexpected_count"] == 3  # one fixation of 16 in three images
    missing = found["audio_segmentation_transcripts", "missing_files"]
    assert missing["unexpected_count"] == 12  # the absent folder lacks every file
    assert "audio.wav;audio.mp3;left_lung.png" in missing["examples"][0]["missing_files"]
    assert found["audio_segmentation_transcripts", "dir_exists"]["unexpected_count"] == 1
    page = (store / "validation.html").read_text(encoding="utf-8")
    assert f'<h2 id="warnings">Warnings: {len(report["warnings"])} (' in page

    # The heatmaps step drops what lies outside the image, and says how many.
    maps = tmp_path / "maps"
    result = runner.invoke(app, ["heatmaps", "--store", str(store), "--out", str(maps),
                                 "--params", str(params)])  # fmt: skip
    assert result.exit_code == 0, result.output
    outside = outside_image_samples(raw / "egd-cxr" / "eye_gaze.csv", written[1])
    assert f"dropped {outside:,} of {total:,} gaze points" in result.output, result.output
    meta = json.loads((maps / "gaze_maps.json").read_text(encoding="utf-8"))
    assert meta["points"] == {"events": total, "dropped": outside}


def outside_image_samples(path: Path, images: list[Image]) -> int:
    """Image samples whose X/Y_ORIGINAL is not a pixel of their image."""
    sizes = {image.dicom_id: (image.rows, image.cols) for image in images}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["DICOM_ID"] in sizes]
    return sum(not (0 <= int(r["X_ORIGINAL"]) < sizes[r["DICOM_ID"]][1]
                    and 0 <= int(r["Y_ORIGINAL"]) < sizes[r["DICOM_ID"]][0])
               for r in rows)  # fmt: skip


def test_an_image_mostly_off_screen_fails_naming_it_and_the_limit(
    written, params: Path, tmp_path: Path
):
    raw = copy_release(written, tmp_path)
    images = written[1]
    write_gaze(raw / "egd-cxr", images, offscreen={4: 0.3})
    out = tmp_path / "out" / "store"
    result = ingest(raw, out, params)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()
    errors = result.output.split("error: ", 1)[1]
    assert errors.startswith("EGD-CXR validation FAILED: 2 error(s)")
    victim = images[4].dicom_id
    for file in ("fixations.csv", "eye_gaze.csv"):
        (line,) = [x for x in errors.splitlines() if x.startswith(f"{file} per image")]
        assert f"'dicom_id': '{victim}'" in line and "record 5" in line, line
        assert "[max_value=0.1]" in line
        assert "at most data.validation.max_offscreen_fraction = 0.1 (params.yaml)" in line
    assert re.search(r"'offscreen_fraction': 0\.3\d*\}", errors)
    assert (out.parent / "store.validation.html").is_file()

    # A looser limit in params.yaml lets the same release through.
    params.write_text(params.read_text() + "  validation:\n    max_offscreen_fraction: 0.35\n")
    result = ingest(raw, out, params)
    assert result.exit_code == 0, result.output
    assert out.is_dir()


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)


def _truncated_pixels(path: Path) -> None:
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(path, enforce_file_format=True)


def _missing(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("corrupt", "says"),
    [(_garbage, "not a DICOM file"), (_truncated_pixels, "field 'PixelData'"),
     (_missing, "image file not found")],
    ids=["garbage", "truncated-pixel-data", "missing"],
)  # fmt: skip
def test_a_bad_dicom_is_named_by_dicom_id_and_path(
    written, params: Path, tmp_path: Path, corrupt, says: str
):
    raw = copy_release(written, tmp_path)
    image = written[1][7]
    path = raw / "mimic-cxr" / image.path
    corrupt(path)
    out = tmp_path / "out" / "store"
    result = ingest(raw, out, params)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()
    (line,) = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: image {image.dicom_id}: "), line
    assert str(path) in line and says in line
    after = result.output.split(line, 1)[1]
    assert after.strip() == "", f"the error continues past its line: {after!r}"


def test_the_writer_follows_the_published_pads():
    """Two pad rows of datasets.md 1.10, as a check on the writer itself."""
    assert Image("x", 1, 1, 3056, 2544, "CHF").pads == (0, 0, 534, 534)
    assert Image("x", 1, 1, 2544, 3056, "CHF").pads == (86, 86, 448, 448)
    assert len(MASTER_COLUMNS) == 59 and len(GAZE_COLUMNS) == 37
    assert math.isclose(Image("x", 1, 1, 3056, 2544, "CHF").shown_fractions()[0], 534 / 1920)
