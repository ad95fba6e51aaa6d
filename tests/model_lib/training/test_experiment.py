"""The experiment end to end on a tiny synthetic store: every stage of the ci preset, then the
test split scored against the center prior; and the fixation maps NSS and AUC-Judd read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.heatmaps import run_heatmaps
from components.ingest import run_ingest
from model_lib.config import GeometryConfig
from model_lib.data.errors import DataError
from model_lib.data.geometry import CanvasTransform
from model_lib.data.loader import BatchLoader, open_split
from model_lib.data.store import StoreWriter
from model_lib.models import CenterPriorBaseline, build_model
from model_lib.presets import ExperimentConfig, get_preset
from model_lib.training import (
    ExperimentResult,
    evaluate_experiment,
    fixated_pixels,
    fixation_maps,
    load_checkpoint,
    load_model_weights,
    predict,
    save_checkpoint,
    train_experiment,
    train_stage,
)
from model_lib.training.experiment import SALIENCY_METRICS

STAGES = ["s1a", "s1b", "s2", "s3"]


@pytest.fixture(scope="session")
def ci_config() -> ExperimentConfig:
    return get_preset("ci")


@pytest.fixture(scope="session")
def tiny_store(
    tiny_release: Path, ci_config: ExperimentConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The tiny release ingested with the ci preset's data config: (store, maps)."""
    out = tmp_path_factory.mktemp("experiment-data")
    store = run_ingest(
        tiny_release / "egd-cxr",
        tiny_release / "mimic-cxr",
        out / "store",
        ci_config.data,
        workers=1,
        progress=False,
    ).store
    maps = run_heatmaps(store, out / "maps", ci_config.data, progress=False).out_dir
    return store, maps


@pytest.fixture(scope="session")
def trained(
    tiny_store: tuple[Path, Path],
    ci_config: ExperimentConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ExperimentResult, Path]:
    """The ci preset trained once: (result, workdir)."""
    workdir = tmp_path_factory.mktemp("experiment")
    result = train_experiment(ci_config, *tiny_store, workdir, progress=False)
    return result, workdir


# --- fixation maps ---------------------------------------------------------------------------

# A 100 x 80 native image in a 100 x 80 canvas sampled to 10 x 8: 10 x 10 native pixels per
# target pixel, no padding.
PLAIN = CanvasTransform.build((100, 80), out_hw=(10, 8), pad_to=(100, 80))
# 50 rows centred in a 100-row canvas: 25 rows of padding above.
PADDED = CanvasTransform.build((50, 80), out_hw=(10, 8), pad_to=(100, 80))
# 200 x 80 fitted at half size (100 x 40), centred with 20 columns of padding on the left.
FITTED = CanvasTransform.build((200, 80), out_hw=(10, 8), pad_to=(100, 80))


@pytest.mark.parametrize(
    ("transform", "points", "pixels"),
    [
        (PLAIN, [(15, 37)], [(3, 1)]),
        (PLAIN, [(15.9, 37.9), (19, 39), (10, 30)], [(3, 1)]),  # one target pixel, counted once
        (PLAIN, [(79, 99), (0, 5)], [(9, 7), (0, 0)]),  # the last pixel; x = 0 alone is kept
        (PADDED, [(0, 1), (79, 49)], [(2, 0), (7, 7)]),
        (FITTED, [(0, 1), (79, 199)], [(0, 2), (9, 5)]),
    ],
)
def test_fixated_pixels_are_the_target_pixels_holding_the_points(
    transform: CanvasTransform, points: list[tuple[float, float]], pixels: list[tuple[int, int]]
) -> None:
    x, y = np.array(points, dtype=np.float64).T
    expected = np.zeros((transform.out_h, transform.out_w), dtype=bool)
    for row, col in pixels:
        expected[row, col] = True
    np.testing.assert_array_equal(fixated_pixels(x, y, transform), expected)


def test_fixated_pixels_drop_points_off_the_image_and_the_release_marker() -> None:
    x = np.array([-3.0, 80.0, 10.0, 0.0, 5.0])
    y = np.array([-3.0, 5.0, 100.0, 0.0, 5.0])
    mask = fixated_pixels(x, y, PLAIN)
    assert np.argwhere(mask).tolist() == [[0, 0]]  # only (5, 5); (0, 0) is the off-image marker
    assert not fixated_pixels(x[:4], y[:4], PLAIN).any()


def test_fixation_maps_of_the_store_sit_where_the_gaze_maps_are_hot(
    tiny_store: tuple[Path, Path],
) -> None:
    store, maps_dir = tiny_store
    test = open_split(store, maps_dir, "test")
    fixations = fixation_maps(store, "test")
    assert fixations.shape == test.images.shape and fixations.dtype == bool
    maps = np.asarray(test.maps, dtype=np.float64)
    for fixated, heat in zip(fixations, maps, strict=True):
        assert 0 < fixated.sum() < fixated.size
        # The ground-truth map is the blur of the same points: hot where they are.
        assert heat[fixated].mean() > 2 * heat[~fixated].mean()
    with pytest.raises(KeyError, match="no split 'nope'"):
        fixation_maps(store, "nope")


def _events(source: str, xy: list[tuple[float, float]]) -> pd.DataFrame:
    x, y = np.array(xy, dtype=np.float64).reshape(-1, 2).T
    return pd.DataFrame(
        {"source": source, "x": x, "y": y, "duration": 0.3, "time": np.arange(len(xy), dtype=float)}
    )


def test_fixation_maps_read_each_images_own_transform_and_source(tmp_path: Path) -> None:
    geometry = GeometryConfig(target_hw=(10, 8), pad_to=(100, 80))
    transforms = [PLAIN, PADDED]
    with StoreWriter(tmp_path, geometry, {"test": 2}) as writer:
        for i, transform in enumerate(transforms):
            record = {"dicom_id": f"img-{i}", "patient_id": i, "study_id": i, "label": i,
                      "source_sha256": "0" * 64, **transform.to_dict()}  # fmt: skip
            gaze = _events("gaze", [(15, 37), (0, 1)])
            fixations = _events("fixation", [(79, 49)] if i == 0 else [(-1, -1), (0, 0)])
            writer.add("test", np.zeros((10, 8)), record, pd.concat([gaze, fixations]))

    maps = fixation_maps(tmp_path, "test", "gaze")
    for got, transform in zip(maps, transforms, strict=True):
        expected = fixated_pixels(np.array([15.0, 0.0]), np.array([37.0, 1.0]), transform)
        np.testing.assert_array_equal(got, expected)
    assert maps[1, 2, 0] and not maps[0, 2, 0]  # (0, 1) lands below the padding of img-1 only
    # The second image has no fixation on it: its off-image ones are dropped.
    with pytest.raises(DataError, match=r"field 'points': image img-1: no fixation point inside"):
        fixation_maps(tmp_path, "test", "fixations_duration")


# --- training ---------------------------------------------------------------------------------


def test_every_stage_trains_and_its_loss_falls(
    trained: tuple[ExperimentResult, Path], ci_config: ExperimentConfig
) -> None:
    result, workdir = trained
    assert list(result.stages) == STAGES == [s.name for s in ci_config.enabled_stages]
    for name, fit in result.stages.items():
        losses = [epoch["train_loss"] for epoch in fit.history]
        assert len(losses) == ci_config.stage(name).max_epochs, name
        assert all(math.isfinite(v) for v in losses), name
        assert losses[-1] < losses[0], f"stage {name}: train loss {losses}"
        assert fit.best_checkpoint == workdir / "checkpoints" / name / "best.pt"
        assert result.stage_seconds[name] > 0
    assert result.final_weights == result.stages["s3"].best_checkpoint
    summary = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert summary["stages"]["s2"]["epochs"] == ci_config.stage("s2").max_epochs
    assert "val_cc" in summary["stages"]["s2"]["final_metrics"]
    assert json.loads((workdir / "experiment.json").read_text()) == ci_config.model_dump(
        mode="json"
    )


def test_final_weights_rebuild_the_trained_model(
    trained: tuple[ExperimentResult, Path],
    tiny_store: tuple[Path, Path],
    ci_config: ExperimentConfig,
) -> None:
    result, _ = trained
    fresh = build_model(ci_config.model)
    load_model_weights(fresh, result.final_weights)
    loader = BatchLoader(open_split(*tiny_store, "val"), 4)
    ours, theirs = predict(result.model, loader), predict(fresh, loader)
    # Same weights; on a CPU with bf16 units the trained copy is channels-last, which changes
    # the order of the convolution sums (differences ~1e-8).
    np.testing.assert_allclose(ours["probs"], theirs["probs"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours["saliency"], theirs["saliency"], rtol=1e-5, atol=1e-9)


def test_a_second_call_resumes_instead_of_retraining(
    trained: tuple[ExperimentResult, Path],
    tiny_store: tuple[Path, Path],
    ci_config: ExperimentConfig,
) -> None:
    result, workdir = trained
    again = train_experiment(ci_config, *tiny_store, workdir, progress=False)
    for name, fit in result.stages.items():
        assert again.stages[name].history == fit.history
    loader = BatchLoader(open_split(*tiny_store, "val"), 4)
    np.testing.assert_array_equal(
        predict(again.model, loader)["probs"], predict(result.model, loader)["probs"]
    )


def test_stages_as_separate_steps_train_the_same_weights(
    trained: tuple[ExperimentResult, Path],
    tiny_store: tuple[Path, Path],
    ci_config: ExperimentConfig,
    tmp_path: Path,
) -> None:
    """What the pipeline does (one stage per process, weights handed over in files) trains
    exactly what one in-process experiment trains."""
    _, workdir = trained
    first = train_stage(
        ci_config, "s1a", *tiny_store, tmp_path / "work", tmp_path / "s1a.pt", progress=False
    )
    second = train_stage(
        ci_config, "s1b", *tiny_store, tmp_path / "work", tmp_path / "s1b.pt",
        init_weights=first.weights, progress=False,
    )  # fmt: skip
    assert second.fit is not None and second.fit.stage == "s1b"
    ours = load_checkpoint(second.weights)["model"]
    theirs = load_checkpoint(workdir / "checkpoints" / "s1b" / "best.pt")["model"]
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert np.array_equal(value.numpy(), theirs[key].numpy()), key


def test_a_disabled_stage_passes_the_weights_on(
    tiny_store: tuple[Path, Path], ci_config: ExperimentConfig, tmp_path: Path
) -> None:
    assert not ci_config.stage("s3j").enabled
    model = build_model(ci_config.model)
    save_checkpoint(tmp_path / "in.pt", {"model": model.state_dict()})
    outcome = train_stage(
        ci_config, "s3j", *tiny_store, tmp_path / "work", tmp_path / "out" / "s3j.pt",
        init_weights=tmp_path / "in.pt",
    )  # fmt: skip
    assert outcome.fit is None
    out = load_checkpoint(outcome.weights)["model"]
    for key, value in model.state_dict().items():
        assert np.array_equal(out[key].numpy(), value.numpy()), key
    assert not (tmp_path / "work").exists()  # nothing trained, nothing checkpointed
    with pytest.raises(ValueError, match="disabled and there are no weights"):
        train_stage(ci_config, "s3j", *tiny_store, tmp_path / "w", tmp_path / "x.pt")
    with pytest.raises(KeyError, match="no stage 's9'"):
        train_stage(ci_config, "s9", *tiny_store, tmp_path / "w", tmp_path / "x.pt")


def test_training_is_repeatable_for_a_seed(
    trained: tuple[ExperimentResult, Path],
    tiny_store: tuple[Path, Path],
    ci_config: ExperimentConfig,
    tmp_path: Path,
) -> None:
    # A fresh run of the first stage's first epoch matches the full run's: same initial weights,
    # same batches.
    first_epoch = get_preset(
        "ci",
        ["stages.s1a.max_epochs=1"] + [f"stages.{s}.enabled=false" for s in STAGES[1:]],
    )
    again = train_experiment(first_epoch, *tiny_store, tmp_path, progress=False)
    assert again.stages["s1a"].history[0] == trained[0].stages["s1a"].history[0]


def test_a_store_of_another_geometry_is_refused(
    tiny_store: tuple[Path, Path], tmp_path: Path
) -> None:
    bigger = get_preset("ci", ["model.input_hw=[100, 80]", "data.geometry.target_hw=[100, 80]"])
    with pytest.raises(DataError, match=r"store\.json, field 'geometry': geometry .* is not the"):
        train_experiment(bigger, *tiny_store, tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()
    wider_blur = get_preset("ci", ["data.heatmap.sigma_px=100"])
    with pytest.raises(DataError, match=r"gaze_maps\.json, field 'heatmap': maps made with"):
        train_experiment(wider_blur, *tiny_store, tmp_path, progress=False)


def test_a_workdir_of_another_experiment_is_refused(
    trained: tuple[ExperimentResult, Path], tiny_store: tuple[Path, Path]
) -> None:
    _, workdir = trained
    wider = get_preset("ci", ["model.width=0.25"])
    with pytest.raises(ValueError, match=r"experiment\.json: .* other \['model'\]"):
        train_experiment(wider, *tiny_store, workdir, progress=False)


# --- evaluation -------------------------------------------------------------------------------


def test_evaluation_scores_the_test_split_against_the_center_prior(
    trained: tuple[ExperimentResult, Path],
    tiny_store: tuple[Path, Path],
    ci_config: ExperimentConfig,
) -> None:
    result, _ = trained
    evaluation = evaluate_experiment(result.model, ci_config, *tiny_store)
    test = open_split(*tiny_store, "test")
    n = len(test)
    assert evaluation.dicom_ids == test.dicom_ids
    np.testing.assert_array_equal(evaluation.labels, test.labels)
    assert evaluation.probs.shape == (n, 3)
    for scores in (evaluation.saliency, evaluation.center_prior):
        assert sorted(scores) == sorted(SALIENCY_METRICS)
        for metric, values in scores.items():
            assert values.shape == (n,) and np.isfinite(values).all(), metric

    summary = json.loads(json.dumps(evaluation.to_dict(), allow_nan=False))
    assert (summary["split"], summary["n"]) == ("test", n)
    report = summary["classification"]
    for key in ("accuracy", "auc_macro", "auc_micro"):
        assert 0 <= report[key] <= 1, key
    assert sorted(report["per_class"]) == ["CHF", "Normal", "Pneumonia"]
    assert np.sum(report["confusion_matrix"]) == n
    for name in ("saliency", "center_prior"):
        assert sorted(summary[name]) == sorted(SALIENCY_METRICS)
        assert all(set(s) == {"mean", "median", "std"} for s in summary[name].values())
    cc_test = summary["cc_vs_center_prior"]
    assert set(cc_test) == {"mean_difference", "t", "p_value"} and 0 <= cc_test["p_value"] <= 1
    expected = np.mean(evaluation.saliency["cc"] - evaluation.center_prior["cc"])
    assert cc_test["mean_difference"] == pytest.approx(expected)


def test_the_center_prior_scores_the_same_as_its_own_baseline(
    tiny_store: tuple[Path, Path], ci_config: ExperimentConfig
) -> None:
    # The baseline is fit on the train maps: evaluated as the model, it ties with itself.
    train = open_split(*tiny_store, "train")
    prior = CenterPriorBaseline.fit(train.maps, train.labels)
    evaluation = evaluate_experiment(prior, ci_config, *tiny_store)
    for metric in SALIENCY_METRICS:
        np.testing.assert_allclose(
            evaluation.saliency[metric], evaluation.center_prior[metric], rtol=1e-6, atol=1e-9
        )
    assert evaluation.classification["auc_macro"] == 0.5  # one constant score for every image
    assert evaluation.to_dict()["cc_vs_center_prior"]["p_value"] > 0.99


def test_the_configs_precision_reaches_training(
    tiny_store: tuple[Path, Path], tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("fp16 trains on this machine's GPU")
    cfg = get_preset("ci", ["precision=fp16"])
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        train_experiment(cfg, *tiny_store, tmp_path, progress=False)


def test_evaluation_reports_the_configs_split(
    tiny_store: tuple[Path, Path], ci_config: ExperimentConfig
) -> None:
    """The authors report on the validation split (``paper-exact``); ``paper`` on test."""
    model = build_model(ci_config.model)
    result = evaluate_experiment(
        model, ci_config.model_copy(update={"evaluation_split": "val"}), *tiny_store
    )
    assert result.split == "val"
    assert sorted(result.dicom_ids) == sorted(open_split(*tiny_store, "val").dicom_ids)
    assert evaluate_experiment(model, ci_config, *tiny_store).split == "test"


def test_the_authors_choices_train_and_evaluate_end_to_end(
    tiny_release: Path, tmp_path: Path
) -> None:
    """``paper-exact``'s switches on the ci network (fp32: no GPU here): ingest with the crop,
    raw intensities and the round-robin split, every stage of the authors' list, the report on
    the validation split."""
    exact = get_preset("paper-exact")
    overrides = [
        f"data.geometry.{k}={getattr(exact.data.geometry, k)}" for k in ("oversize", "intensity")
    ] + [
        "data.split.method=authors",
        "model.input_norm=none",
        "evaluation_split=val",
        "precision=fp32",
        *(f"stages.{name}.max_epochs=1" for name in ("s1a", "s1b", "s2", "s3j")),
    ]
    cfg = get_preset("ci", overrides)
    cfg = cfg.model_copy(update={"stages": tuple(
        spec.model_copy(update={k: getattr(exact.stage(spec.name), k) for k in (
            "enabled", "shuffle", "frozen_batchnorm", "triplet_features", "triplet_reduction")})
        for spec in cfg.stages
    )})  # fmt: skip
    store = run_ingest(tiny_release / "egd-cxr", tiny_release / "mimic-cxr", tmp_path / "store",
                       cfg.data, workers=1, progress=False).store  # fmt: skip
    manifest = pd.read_parquet(store / "manifest.parquet")
    assert (manifest["offset_x"] < 0).any(), "the tiny release has a landscape image to crop"
    maps = run_heatmaps(store, tmp_path / "maps", cfg.data, progress=False).out_dir
    result = train_experiment(cfg, store, maps, tmp_path / "work", progress=False)
    assert list(result.stages) == ["s1a", "s1b", "s2", "s3j"]
    for name, fit in result.stages.items():
        assert all(math.isfinite(epoch["train_loss"]) for epoch in fit.history), name
    evaluation = evaluate_experiment(result.model, cfg, store, maps)
    assert evaluation.split == "val"
    assert math.isfinite(evaluation.classification["auc_macro"])
