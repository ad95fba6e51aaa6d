"""The evaluation report of a real (small) run, opened in headless Chromium: it loads without a
console error and every image renders. The checker itself is shown to catch broken pages.

The run is real: the tiny synthetic release ingested with the ci preset, one stage trained by
the train step into an MLflow parent run (sqlite), a disabled stage passed through, and the
evaluate step with an MT-UNet baseline. Chromium (Debian's ``chromium`` package) is needed for
the browser checks only; without it they skip and say why.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from components.evaluate import evaluate_step
from components.heatmaps import run_heatmaps
from components.ingest import run_ingest
from components.promote import load_policy
from components.tracking import STEP_TAG, open_pipeline_run
from components.train_stage import train_stage_step
from model_lib.models import build_model
from model_lib.presets import get_preset
from model_lib.training import evaluate_experiment, load_model_weights, save_checkpoint
from model_lib.training.evaluate import GALLERY_GROUPS, compare_saliency
from tests.browser import Browser, chromium_path, open_browser

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PRESET = "ci"
OVERRIDES = ["stages.s1b.max_epochs=2"]
POLICY = Path(__file__).resolve().parents[2] / "mlflow" / "promotion.yaml"


@dataclass(frozen=True)
class Evaluated:
    store: Path
    maps: Path
    weights: Path
    tracking_uri: str
    parent_run_id: str
    summary: Path
    report: Path


@pytest.fixture(scope="module")
def evaluated(
    tiny_release: Path, migrated_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> Evaluated:
    cfg = get_preset(PRESET, OVERRIDES)
    root = tmp_path_factory.mktemp("report-run")
    store = run_ingest(tiny_release / "egd-cxr", tiny_release / "mimic-cxr", root / "store",
                       cfg.data, workers=1, progress=False).store  # fmt: skip
    maps = run_heatmaps(store, root / "maps", cfg.data, progress=False).out_dir
    shutil.copyfile(migrated_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = open_pipeline_run(
        uri,
        pipeline_run_id="report-test",
        params={"preset": PRESET, "overrides": json.dumps(OVERRIDES)},
        tags={"data_rev": "v-report", "preset": PRESET},
        config=cfg.model_dump(mode="json"),
    )
    steps = {"tracking_uri": uri, "parent_run_id": parent}
    train_stage_step("s1b", PRESET, OVERRIDES, store, maps, root / "s1b.pt", init_weights=None,
                     **steps)  # fmt: skip
    train_stage_step("s3j", PRESET, OVERRIDES, store, maps, root / "s3j.pt",
                     init_weights=root / "s1b.pt", **steps)  # fmt: skip
    torch.manual_seed(11)
    mtunet = build_model(cfg.model.model_copy(update={"arch": "mt_unet"}))
    save_checkpoint(root / "mtunet.pt", {"model": mtunet.state_dict()})
    summary, report = root / "summary.json", root / "report.html"
    policy = load_policy(POLICY).model_dump(mode="json")
    evaluate_step(PRESET, OVERRIDES, store, maps, root / "s3j.pt", policy, summary, report,
                  mtunet_weights=root / "mtunet.pt", **steps)  # fmt: skip
    return Evaluated(store, maps, root / "s3j.pt", uri, parent, summary, report)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if chromium_path() is None:
        pytest.skip(
            "chromium is not on PATH: install Debian's chromium package "
            "(apt-get install --no-install-recommends chromium) to run the browser checks"
        )
    with open_browser() as running:
        yield running


def test_the_report_loads_without_errors_and_every_image_renders(
    evaluated: Evaluated, browser: Browser
) -> None:
    page = browser.load(evaluated.report.as_uri())
    assert page.errors == []
    # ROC, confusion, calibration, distributions, three gallery groups, training curves.
    assert len(page.images) == 8
    assert page.broken_images == []
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.images)


def test_the_report_has_every_part_of_the_run(evaluated: Evaluated) -> None:
    page = evaluated.report.read_text(encoding="utf-8")
    for text in ("v-report", "weights sha256", "store md5", "<th>Grad-CAM</th>",
                 "<th>MT-UNet</th>", "model - MT-UNet", '<tr><td class="text">s1b</td><td>2</td>',
                 "stage s3j is disabled in preset ci", "Expected calibration error"):  # fmt: skip
        assert text in page, text
    summary = json.loads(evaluated.summary.read_text(encoding="utf-8"))
    assert 0 <= summary["calibration"]["ece"] <= 1
    assert set(summary["baselines"]) == {"grad_cam", "mt_unet"}


def test_the_report_is_logged_to_the_evaluate_run(evaluated: Evaluated, tmp_path: Path) -> None:
    client = MlflowClient(evaluated.tracking_uri)
    experiment = client.get_run(evaluated.parent_run_id).info.experiment_id
    (run,) = client.search_runs(
        [experiment],
        filter_string=f"tags.mlflow.parentRunId = '{evaluated.parent_run_id}' "
        f"and tags.`{STEP_TAG}` = 'evaluate'",
    )
    logged = client.download_artifacts(run.info.run_id, "evaluation/report.html", str(tmp_path))
    assert Path(logged).read_bytes() == evaluated.report.read_bytes()
    assert "test/calibration.ece" in run.data.metrics
    assert "test/baselines.grad_cam.cc.mean" in run.data.metrics


def test_baselines_and_gallery_of_the_real_split(evaluated: Evaluated) -> None:
    cfg = get_preset(PRESET, OVERRIDES)
    model = build_model(cfg.model)
    load_model_weights(model, evaluated.weights)
    result = evaluate_experiment(model, cfg, evaluated.store, evaluated.maps)
    comparison = compare_saliency(model, cfg, evaluated.store, evaluated.maps, result)
    n = len(result.labels)
    assert list(comparison.scores) == ["model", "center prior", "Grad-CAM"]
    assert set(comparison.skipped) == {"MT-UNet"}
    for name, scores in comparison.scores.items():
        for metric, values in scores.items():
            assert values.shape == (n,) and np.isfinite(values).all(), (name, metric)
    # Grad-CAM is its own map, not a copy of the model's or the prior's.
    assert not np.allclose(comparison.scores["Grad-CAM"]["cc"], result.saliency["cc"])
    assert {case.group for case in comparison.gallery} == set(GALLERY_GROUPS)
    for case in comparison.gallery:
        assert case.cc == pytest.approx(result.saliency["cc"][case.row])
        assert case.dicom_id == result.dicom_ids[case.row]
        assert case.image.shape == case.truth.shape == case.prediction.shape
        assert case.image.min() >= 0 and case.image.max() <= 1
        for gaze in (case.truth, case.prediction):
            assert gaze.sum() == pytest.approx(1.0, rel=1e-4)
    best = max(c.cc for c in comparison.gallery if c.group == "best")
    worst = min(c.cc for c in comparison.gallery if c.group == "worst")
    assert best == pytest.approx(result.saliency["cc"].max())
    assert worst == pytest.approx(result.saliency["cc"].min())


# --- the checker catches what it is there to catch --------------------------------------------

DOT_PNG = (  # a 1 x 1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
    "rkJggg=="
)


def _page(folder: Path, body: str) -> str:
    path = folder / "page.html"
    path.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>t</title></head>'
                    f"<body>{body}</body></html>", encoding="utf-8")  # fmt: skip
    return path.as_uri()


def test_a_clean_page_passes(browser: Browser, tmp_path: Path) -> None:
    page = browser.load(_page(tmp_path, f'<img alt="dot" src="data:image/png;base64,{DOT_PNG}">'))
    assert page.errors == [] and page.broken_images == []
    assert page.images[0]["width"] == 1


def test_broken_and_missing_images_are_caught(browser: Browser, tmp_path: Path) -> None:
    body = ('<img alt="corrupt" src="data:image/png;base64,AAAA">'
            '<img alt="missing" src="nowhere.png">')  # fmt: skip
    page = browser.load(_page(tmp_path, body))
    assert [i["alt"] for i in page.broken_images] == ["corrupt", "missing"]
    assert any("ERR_FILE_NOT_FOUND" in e for e in page.errors)


def test_script_errors_are_caught(browser: Browser, tmp_path: Path) -> None:
    body = '<script>console.error("bad thing"); undefinedFunction();</script>'
    page = browser.load(_page(tmp_path, body))
    assert any(e.startswith("console.error: bad thing") for e in page.errors)
    assert any(e.startswith("exception:") and "undefinedFunction" in e for e in page.errors)
