"""The EGD-CXR file schemas: exact column orders, id formats and class encoding.

One place for what the released files look like, shared by the synthetic generator, the real
loader and the ingest validation, so the three can never drift apart.
"""

from __future__ import annotations

import re

CLASS_NAMES: tuple[str, ...] = ("Normal", "CHF", "Pneumonia")
"""Model class order: index 0 Normal, 1 CHF, 2 Pneumonia."""

LABEL_COLUMNS: tuple[str, ...] = ("Normal", "CHF", "pneumonia")
"""One-hot class columns of master_sheet.csv, in CLASS_NAMES order (note the lower-case p)."""

PAD_COLUMNS: tuple[str, ...] = (
    "image_top_pad",
    "image_bottom_pad",
    "image_left_pad",
    "image_right_pad",
)

DX_COLUMNS: tuple[str, ...] = tuple(name for k in range(1, 10) for name in (f"dx{k}", f"dx{k}_icd"))

REPORT_LABEL_COLUMNS: tuple[str, ...] = (
    "consolidation",
    "enlarged_cardiac_silhouette",
    "linear__patchy_atelectasis",
    "lobar__segmental_collapse",
    "not_otherwise_specified_opacity___pleural__parenchymal_opacity__",
    "pleural_effusion_or_thickening",
    "pulmonary_edema__hazy_opacity",
    "normal_anatomically",
    "elevated_hemidiaphragm",
    "hyperaeration",
    "vascular_redistribution",
)

CHEXPERT_COLUMNS: tuple[str, ...] = (
    "atelectasis__chx",
    "cardiomegaly__chx",
    "consolidation__chx",
    "edema__chx",
    "enlarged_cardiomediastinum__chx",
    "fracture__chx",
    "lung_lesion__chx",
    "lung_opacity__chx",
    "no_finding__chx",
    "pleural_effusion__chx",
    "pleural_other__chx",
    "pneumonia__chx",
    "pneumothorax__chx",
    "support_devices__chx",
)

MASTER_SHEET_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "path",
    "study_id",
    "patient_id",
    "stay_id",
    "gender",
    "anchor_age",
    *PAD_COLUMNS,
    *DX_COLUMNS,
    "normal_reports",
    *LABEL_COLUMNS,
    *REPORT_LABEL_COLUMNS,
    *CHEXPERT_COLUMNS,
    "cxr_exam_indication",
)
assert len(MASTER_SHEET_COLUMNS) == 59

GAZE_COLUMNS: tuple[str, ...] = (
    "SESSION_ID",
    "MEDIA_ID",
    "DICOM_ID",
    "CNT",
    "Time (in secs)",
    "TIMETICK(f=10000000)",
    "FPOGX",
    "FPOGY",
    "FPOGS",
    "FPOGD",
    "FPOGID",
    "FPOGV",
    "BPOGX",
    "BPOGY",
    "BPOGV",
    "LPCX",
    "LPCY",
    "LPD",
    "LPS",
    "LPV",
    "RPCX",
    "RPCY",
    "RPD",
    "RPS",
    "RPV",
    "BKID",
    "BKDUR",
    "BKPMIN",
    "LPMM",
    "LPMMV",
    "RPMM",
    "RPMMV",
    "SACCADE_MAG",
    "SACCADE_DIR",
    "VID_FRAME",
    "X_ORIGINAL",
    "Y_ORIGINAL",
)
"""Columns of fixations.csv and eye_gaze.csv (Gazepoint export), in file order."""
assert len(GAZE_COLUMNS) == 37

TIME_COLUMN = "Time (in secs)"
TIMETICK_COLUMN = "TIMETICK(f=10000000)"
VALIDITY_COLUMNS: tuple[str, ...] = ("FPOGV", "BPOGV", "LPV", "RPV", "LPMMV", "RPMMV")

BBOX_COLUMNS: tuple[str, ...] = ("dicom_id", "bbox_name", "x1", "x2", "y1", "y2")
BBOX_NAMES: tuple[str, ...] = (
    *(
        f"{side} {part}"
        for side in ("left", "right")
        for part in (
            "clavicle",
            "costophrenic angle",
            "hilar structures",
            "upper lung zone",
            "mid lung zone",
            "lower lung zone",
            "lung",
        )
    ),
    "cardiac silhouette",
    "trachea",
    "upper mediastinum",
)
"""The 17 anatomical box names (Chest ImaGenome style)."""

TRANSCRIPT_MASKS: tuple[str, ...] = (
    "left_lung.png",
    "right_lung.png",
    "mediastanum.png",
    "aortic_knob.png",
)
TRANSCRIPT_FILES: tuple[str, ...] = (
    "audio.wav",
    "audio.mp3",
    "transcript.json",
    *TRANSCRIPT_MASKS,
)

DICOM_ID_RE = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
GAZE_DICOM_ID_RE = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){3}-[0-9a-f]{3}([0-9a-f]{5})?$")
"""A gaze-table id: a 44-char image id, or its 39-char prefix on calibration screens."""
CALIBRATION_ID_LENGTH = 39
MASTER_PATH_RE = re.compile(r"^files/p1\d/p(\d{8})/s(\d{8})/([0-9a-f-]{44})\.dcm$")
ICD_RE = re.compile(
    r"^(?:[0-9EV][0-9]{2,3}(?:\.[0-9]{1,2})?"  # ICD-9, e.g. 428, 401.9, V45.81
    r"|[0-9]{2}(?:\.[0-9]{1,2})?"  # ICD-9 that lost its leading zero, e.g. 79.99
    r"|[A-Z][0-9]{2}(?:\.[0-9A-Z]{1,4})?)$"  # ICD-10, e.g. I50.9, S06.0X0A
)
AGE_BINS: tuple[str, ...] = ("20 - 30", "30 - 40", "40 - 50", "50 - 60", "60 - 70", "70 - 80")

SCREEN_WH: tuple[int, int] = (1920, 1080)
"""Eye-tracking monitor resolution (width, height)."""
DISPLAY_CANVAS_WH: tuple[int, int] = (1920, 1024)
"""Letterbox canvas the images were padded to for display (width, height)."""


def mimic_image_path(patient_id: int, study_id: int, dicom_id: str, suffix: str = ".dcm") -> str:
    """Relative MIMIC-CXR path: files/p<first 2 digits>/p<subject>/s<study>/<dicom_id><suffix>."""
    subject = f"{patient_id:08d}"
    return f"files/p{subject[:2]}/p{subject}/s{study_id:08d}/{dicom_id}{suffix}"
