"""Clinical side of a synthetic case: ED diagnoses, report labels, indication and dictation.

All of it follows the rendered findings: a CHF image with an effusion has the effusion in its
report labels, its CheXpert labels and its dictation; a pneumonia names the zone it was drawn in.
"""

from __future__ import annotations

import numpy as np

from model_lib.data import schema
from model_lib.data.synth.cohort import Case
from model_lib.data.synth.findings import CHF, NORMAL, PNEUMONIA, Findings

# (title, ICD-9, ICD-10) per diagnosis. Some ICD-9 codes appear without their leading zero, as in
# the release (079.99 -> 79.99, 038.9 -> 38.9).
_PRIMARY: dict[int, tuple[tuple[str, str, str], ...]] = {
    CHF: (
        ("CONGESTIVE HEART FAILURE, UNSPEC", "428", "I50.9"),
        ("Heart failure, unspecified", "428.0", "I50.9"),
        ("Acute on chronic diastolic heart failure", "428.33", "I50.33"),
        ("Hypertensive heart disease with heart failure", "402.91", "I11.0"),
    ),
    PNEUMONIA: (
        ("PNEUMONIA,ORGANISM UNSPECIFIED", "486", "J18.9"),
        ("Lobar pneumonia, unspecified organism", "481", "J18.1"),
        ("BACTERIAL PNEUMONIA NOS", "482.9", "J15.9"),
    ),
    NORMAL: (
        ("CHEST PAIN NOS", "786.50", "R07.9"),
        ("SHORTNESS OF BREATH", "786.05", "R06.02"),
        ("SYNCOPE AND COLLAPSE", "780.2", "R55"),
        ("ABDOMINAL PAIN, UNSPECIFIED SITE", "789.00", "R10.9"),
        ("FALL FROM OTHER SLIPPING", "E885.9", "W18.30XA"),
    ),
}
_OTHER: tuple[tuple[str, str, str], ...] = (
    ("HYPERTENSION NOS", "401.9", "I10"),
    ("DIABETES UNCOMPL ADULT", "250.00", "E11.9"),
    ("ATRIAL FIBRILLATION", "427.31", "I48.91"),
    ("CHRONIC KIDNEY DISEASE, UNSPEC", "585.9", "N18.9"),
    ("VIRAL INFECTION NOS", "79.99", "B34.9"),
    ("SEPTICEMIA NOS", "38.9", "A41.9"),
    ("LONG-TERM USE ANTICOAGULANT", "V58.61", "Z79.01"),
    ("TOBACCO USE DISORDER", "305.1", "F17.210"),
    ("HYPERLIPIDEMIA NEC/NOS", "272.4", "E78.5"),
)
_INDICATIONS: dict[int, tuple[str, ...]] = {
    CHF: (
        "___{s} with SOB, lower extremity edema // ?CHF",
        "History: ___{s} with dyspnea on exertion, orthopnea\nTECHNIQUE: PA chest",
        'Evaluate for fluid overload, "wet" lungs per ED',
    ),
    PNEUMONIA: (
        "___{s} with fever, cough // ?pna",
        "___-year-old {m} with productive cough, r/o pneumonia",
        'Cough, fever; "crackles" at the base\n// eval for infiltrate',
    ),
    NORMAL: (
        "___{s} with chest pain // r/o acute process",
        "History: ___{s} s/p fall, evaluate for acute cardiopulmonary process",
        "___-year-old {m} with syncope, ?aspiration",
    ),
}
_MULTILINE = 'History: ___{s} with SOB, chest pain, "pressure"\n// eval for acute process'


def ed_diagnoses(case: Case, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(title, ICD code) pairs, primary first; one ICD version per stay, both across the sheet."""
    version = 1 + int(rng.random() < 0.45)  # 1 = ICD-9, 2 = ICD-10
    primary = _PRIMARY[case.label][rng.integers(len(_PRIMARY[case.label]))]
    others = [_OTHER[k] for k in rng.permutation(len(_OTHER))[: rng.integers(0, 5)]]
    return [(entry[0], entry[version]) for entry in [primary, *others]]


def report_labels(findings: Findings, rng: np.random.Generator) -> dict[str, int]:
    """The 11 report-derived 0/1 labels, from what is visible (the radiologist's report)."""
    visible = findings.severity > 0.15
    consolidation = findings.consolidation is not None and visible
    return {
        "consolidation": int(consolidation),
        "enlarged_cardiac_silhouette": int(findings.ctr > 0.52),
        "linear__patchy_atelectasis": int(findings.atelectasis),
        "lobar__segmental_collapse": int(consolidation and rng.random() < 0.1),
        "not_otherwise_specified_opacity___pleural__parenchymal_opacity__": int(
            consolidation or findings.edema > 0.3
        ),
        "pleural_effusion_or_thickening": int(max(findings.effusion) > 0.03),
        "pulmonary_edema__hazy_opacity": int(findings.edema > 0.25),
        "normal_anatomically": int(findings.label == NORMAL and not findings.atelectasis),
        "elevated_hemidiaphragm": int(findings.elevated_side is not None),
        "hyperaeration": int(findings.hyperaeration),
        "vascular_redistribution": int(findings.redistribution > 0.3),
    }


def chexpert_labels(findings: Findings, rng: np.random.Generator) -> dict[str, float]:
    """CheXpert tri-state per column: 1.0, 0.0, -1.0 (uncertain) or NaN (not mentioned)."""
    nan = float("nan")

    def mention(present: bool, strength: float = 1.0) -> float:
        if present:
            return -1.0 if rng.random() < 0.25 * (1 - strength) + 0.05 else 1.0
        return 0.0 if rng.random() < 0.3 else nan

    effusion = max(findings.effusion) > 0.03
    cons = findings.consolidation is not None
    abnormal = findings.label != NORMAL or findings.atelectasis
    out = dict.fromkeys(schema.CHEXPERT_COLUMNS, nan)
    out.update(
        {
            "atelectasis__chx": mention(findings.atelectasis),
            "cardiomegaly__chx": mention(findings.ctr > 0.52, min(1.0, (findings.ctr - 0.5) * 10)),
            "consolidation__chx": mention(cons, findings.severity),
            "edema__chx": mention(findings.edema > 0.25, findings.edema),
            "lung_opacity__chx": 1.0 if cons or findings.edema > 0.3 else nan,
            "no_finding__chx": nan if abnormal else 1.0,
            "pleural_effusion__chx": mention(effusion),
            "pneumonia__chx": mention(cons, findings.severity) if cons else nan,
            "pneumothorax__chx": 0.0 if rng.random() < 0.4 else nan,
            "support_devices__chx": 1.0 if findings.devices else nan,
        }
    )
    return out


def normal_report(findings: Findings, rng: np.random.Generator) -> int:
    """Report-derived normal flag: correlated with, but not equal to, the Normal class."""
    if findings.label == NORMAL:
        return int(not findings.atelectasis and rng.random() < 0.9)
    return int(findings.severity < 0.15 and rng.random() < 0.5)


def indication(case: Case, rng: np.random.Generator, *, multiline: bool = False) -> str:
    """Indication text with ``___`` de-identification tokens; some with commas, quotes, newlines."""
    template = _MULTILINE if multiline else _INDICATIONS[case.label][rng.integers(3)]
    return template.format(s=case.gender, m="woman" if case.gender == "F" else "man")


def dictation(findings: Findings) -> str:
    """What the radiologist says about the image, in report order."""
    sentences = []
    if findings.ctr > 0.52:
        sentences.append("The cardiac silhouette is enlarged.")
    else:
        sentences.append("Heart size is normal.")
    if findings.edema > 0.25:
        sentences.append("There is perihilar haziness consistent with pulmonary edema.")
    if findings.redistribution > 0.3:
        sentences.append("Pulmonary vascular redistribution is noted.")
    sides = [s for s, h in zip(("right", "left"), findings.effusion, strict=True) if h > 0.03]
    if sides:
        where = "bilateral" if len(sides) == 2 else sides[0]
        sentences.append(f"Small {where} pleural effusion with blunting of the costophrenic angle.")
    else:
        sentences.append("No pleural effusion.")
    c = findings.consolidation
    if c is not None:
        sentences.append(f"Patchy consolidation in the {c.side} {c.zone} lung zone.")
    if findings.atelectasis:
        sentences.append("Linear atelectasis at the lung base.")
    if findings.label == CHF:
        sentences.append("Findings are consistent with congestive heart failure.")
    elif findings.label == PNEUMONIA:
        sentences.append("Findings are concerning for pneumonia.")
    elif findings.label == NORMAL:
        sentences.append("The lungs are clear. No acute cardiopulmonary process.")
    return " ".join(sentences)


def transcript(text: str, duration: float, rng: np.random.Generator) -> dict[str, object]:
    """transcript.json content: words (a few two-word phrases) timed inside the reading."""
    words = text.split()
    phrases: list[str] = []
    while words:
        take = 2 if len(words) > 1 and rng.random() < 0.05 else 1
        phrases.append(" ".join(words[:take]))
        words = words[take:]
    start = min(rng.uniform(0.8, 2.5), duration * 0.2)
    slot = (duration * 0.95 - start) / len(phrases)
    items = []
    for k, phrase in enumerate(phrases):
        begin = start + k * slot + rng.uniform(0, 0.15 * slot)
        end = begin + slot * rng.uniform(0.5, 0.8)
        items.append({"phrase": phrase, "begin_time": round(begin, 2), "end_time": round(end, 2)})
    return {"full_text": text, "time_stamped_text": items}
