"""The report page from hand-made evaluation results: every section, every plot a PNG inside the
page, nothing fetched from elsewhere; and how the gallery picks its cases."""

from __future__ import annotations

import base64
import re
import struct

import numpy as np
import pytest

from components.report import SECTIONS, ReportContent, StageCurves, evaluation_html
from model_lib.metrics import classification_report, reliability
from model_lib.training.evaluate import (
    GALLERY_GROUPS,
    GalleryCase,
    SaliencyComparison,
    select_gallery,
)

METRICS = ("kld", "cc", "sim", "nss", "auc_judd")
N = 12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _scores(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {m: rng.normal(0.5, 0.1, N) for m in METRICS}


def _case(group: str, row: int, rng: np.random.Generator) -> GalleryCase:
    gaze = rng.random((20, 16)).astype(np.float32)
    return GalleryCase(
        group=group,
        row=row,
        dicom_id=f"dicom-{row}",
        label=row % 3,
        predicted=(row + 1) % 3,
        cc=0.1 * row,
        image=rng.random((20, 16)).astype(np.float32),
        truth=gaze / gaze.sum(),
        prediction=np.full((20, 16), 1 / 320, dtype=np.float32),
    )


def content(*, mtunet: bool = False, stages: bool = True) -> ReportContent:
    rng = np.random.default_rng(0)
    labels = np.arange(N) % 3
    probs = rng.dirichlet(np.ones(3), N)
    names = ["model", "center prior", "Grad-CAM"] + (["MT-UNet"] if mtunet else [])
    scores = {name: _scores(rng) for name in names}
    tests = {name: {"mean_difference": 0.1, "t": 2.0, "p_value": 0.07} for name in names[1:]}
    skipped = {} if mtunet else {"MT-UNet": "no trained MT-UNet was given"}
    gallery = tuple(_case(g, i, rng) for i, g in enumerate(GALLERY_GROUPS))
    curves = [
        StageCurves(
            "s1b",
            [
                {"train_loss": 1.0, "val_loss": 1.1, "val_auc_macro": 0.6},
                {"train_loss": 0.8, "val_loss": 0.9, "val_auc_macro": 0.7},
            ],
            best_epoch=1,
            note="MLflow run abc",
        ),
        StageCurves("s2", [{"train_loss": 2.0, "val_loss": 2.1, "val_cc": 0.3}], best_epoch=0),
        StageCurves("s3j", [], note="stage s3j is disabled in preset ci"),
    ]
    summary = {"split": "test", "n": N, "classification": classification_report(probs, labels)}
    return ReportContent(
        title="cxr-gaze evaluation: preset ci",
        summary=summary,
        probs=probs,
        labels=labels,
        gate_reasons=["pass: challenger scores are finite", "fail: macro AUC 0.5 >= floor 0.7"],
        calibration=reliability(probs, labels),
        saliency=SaliencyComparison(scores, tests, skipped, gallery),
        stages=curves if stages else (),
        lineage=[("pipeline", "tag data_rev", "v1 <b>"), ("model", "weights sha256", "ab12")],
    )


@pytest.fixture(scope="module")
def page() -> str:
    """The page of :func:`content`, rendered once (plots take seconds on a busy CPU)."""
    return evaluation_html(content())


def png_size(uri: str) -> tuple[int, int]:
    data = base64.b64decode(uri.removeprefix("data:image/png;base64,"), validate=True)
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_section_is_there_in_order_with_its_contents_link(page: str) -> None:
    starts = [
        page.index(f'<section id="{key}"><h2>{title}</h2>') for key, title in SECTIONS.items()
    ]
    assert starts == sorted(starts)
    for key in SECTIONS:
        assert f'<a href="#{key}">' in page
    for text in ("macro AUC", "Confusion matrix", "Expected calibration error", "Grad-CAM",
                 "center prior", "Paired t-test", "Best CC", "Median CC", "Worst CC",
                 "stage s3j is disabled in preset ci", "weights sha256"):  # fmt: skip
        assert text in page, text


def test_every_image_is_an_inline_png_and_nothing_comes_from_elsewhere(page: str) -> None:
    sources = re.findall(r'<img alt="[^"]+" src="([^"]+)">', page)
    # ROC, confusion, calibration, distributions, three gallery groups, training curves.
    assert len(sources) == 8 == page.count("<img")
    for uri in sources:
        width, height = png_size(uri)
        assert 50 < width < 1000 and 50 < height < 1000
    for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert ref.startswith(("data:image/png;base64,", "#")), ref
    lowered = page.lower()
    for outside in ("http://", "https://", "<script", "<link", "url(", "@import", "<iframe"):
        assert outside not in lowered, outside
    assert len(page) < 600_000  # small enough to open from the KFP UI


def test_text_from_the_run_is_escaped(page: str) -> None:
    assert "v1 &lt;b&gt;" in page and "v1 <b>" not in page


def test_mtunet_is_a_column_when_given_and_a_note_otherwise(page: str) -> None:
    assert "<th>MT-UNet</th>" not in page
    assert "MT-UNet: no trained MT-UNet was given" in page
    with_it = evaluation_html(content(mtunet=True))
    assert "<th>MT-UNet</th>" in with_it and "model - MT-UNet" in with_it
    assert "Baselines left out" not in with_it


def test_no_history_says_so_and_draws_no_curves() -> None:
    page = evaluation_html(content(stages=False))
    assert "No training history was found" in page
    assert page.count("<img") == 7


# --- gallery selection (model_lib.training.evaluate.select_gallery) ---------------------------


def test_gallery_picks_best_median_and_worst() -> None:
    scores = [0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]
    # Ranked high to low: rows 1, 6, 4, 8, 2, 7, 3, 5, 0.
    picked = select_gallery(scores, per_group=3)
    assert {k: v.tolist() for k, v in picked.items()} == {
        "best": [1, 6, 4],
        "median": [8, 2, 7],
        "worst": [0, 5, 3],
    }


@pytest.mark.parametrize(
    ("scores", "per_group", "expected"),
    [
        ([0.3, 0.9, 0.5, 0.1, 0.7], 3, {"best": [1], "median": [2], "worst": [3]}),
        (
            [0.4, 0.2, 0.6, 0.8, 0.0, 0.5, 0.1],
            2,
            {"best": [3, 2], "median": [5, 0], "worst": [4, 6]},
        ),
        ([0.5], 3, {"best": [0], "median": [0], "worst": [0]}),
        ([0.2, 0.4], 3, {"best": [1], "median": [1], "worst": [0]}),
        # Ties rank by row: the groups stay disjoint.
        ([0.5, 0.5, 0.5], 1, {"best": [0], "median": [1], "worst": [2]}),
    ],
)
def test_gallery_small_splits_and_ties(scores, per_group: int, expected) -> None:
    picked = select_gallery(np.array(scores), per_group)
    assert {k: v.tolist() for k, v in picked.items()} == expected
    if len(scores) >= 3:
        rows = np.concatenate(list(picked.values()))
        assert np.unique(rows).size == rows.size


@pytest.mark.parametrize(
    ("scores", "per_group", "match"),
    [
        ([0.1, 0.2], 0, "per_group"),
        ([], 1, "non-empty"),
        ([[0.1, 0.2]], 1, r"\(N,\)"),
        ([0.1, np.nan, 0.3], 1, r"NaN or inf at row\(s\) \[1\]"),
    ],
)
def test_gallery_bad_input(scores, per_group: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_gallery(np.array(scores, dtype=np.float64), per_group)
