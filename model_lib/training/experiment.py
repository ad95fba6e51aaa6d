"""One experiment end to end: every enabled stage on a packed store, then a held-out split scored
against the center-prior baseline.

:func:`train_experiment` builds the network a config describes and runs its stages in order,
checkpointing under ``<workdir>/checkpoints/<stage>/`` so that a killed run resumes where it
stopped. :func:`evaluate_experiment` predicts a split and scores it: the classification report,
the five saliency metrics per image for the model and for the center prior fit on the training
maps, and a paired t-test of their per-image CC.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from model_lib.data.errors import DataError
from model_lib.data.gaze_maps import META_FILE as MAPS_META_FILE
from model_lib.data.geometry import CanvasTransform
from model_lib.data.loader import BatchLoader, open_split
from model_lib.data.store import META_FILE as STORE_META_FILE
from model_lib.data.store import TRANSFORM_COLUMNS, PackedStore
from model_lib.metrics import (
    auc_judd,
    cc,
    classification_report,
    kld,
    nss,
    paired_t_test,
    saliency_summary,
    sim,
)
from model_lib.models import CenterPriorBaseline, build_model
from model_lib.training.callbacks import Callback
from model_lib.training.chain import run_stages, split_loaders
from model_lib.training.checkpoint import (
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    seed_everything,
)
from model_lib.training.evaluate import predict
from model_lib.training.fit import FitResult
from model_lib.training.precision import PrecisionName
from model_lib.training.stages import StageSpec

if TYPE_CHECKING:
    # model_lib.presets imports this package (for the stage specs): no runtime import back.
    from model_lib.presets import ExperimentConfig

CHECKPOINTS_DIR = "checkpoints"
CONFIG_FILE = "experiment.json"
"""The config a workdir's checkpoints were trained with, checked on resume."""
_RESUME_KEYS = ("model", "data", "seed")
"""Config sections a resumed run must share with the checkpoints (stages are checked per stage
by ``fit_stage``, which also allows raising an epoch cap)."""
SALIENCY_METRICS: tuple[str, ...] = ("kld", "cc", "sim", "nss", "auc_judd")


@dataclass(frozen=True)
class ExperimentResult:
    """What :func:`train_experiment` produced.

    ``model`` holds the last stage's best weights, which ``final_weights`` stores (load them into
    ``build_model(cfg.model)`` with :func:`~model_lib.training.load_model_weights`).
    ``stage_seconds`` is the wall time spent on each stage in this call: near 0 for a stage a
    resumed run found finished.
    """

    model: nn.Module
    stages: dict[str, FitResult]
    final_weights: Path
    stage_seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Per stage: epochs run, best epoch, stop reason, seconds and the best epoch's metrics;
        plain JSON values."""
        return {
            "final_weights": str(self.final_weights),
            "stages": {
                name: {
                    "epochs": len(fit.history),
                    "best_epoch": fit.best_epoch,
                    "stopped_reason": fit.stopped_reason,
                    "seconds": self.stage_seconds[name],
                    "final_metrics": dict(fit.final_metrics),
                }
                for name, fit in self.stages.items()
            },
        }


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one split, with the per-image values for later reports.

    ``probs`` (N, C) and ``labels`` (N,) in split order; ``saliency`` and ``center_prior`` map
    each of :data:`SALIENCY_METRICS` to its (N,) float64 per-image values for the model and the
    center prior; ``classification`` is :func:`~model_lib.metrics.classification_report`;
    ``cc_test`` the paired t-test of per-image CC, model minus center prior
    (``mean_difference``, ``t``, ``p_value``).
    """

    split: str
    dicom_ids: tuple[str, ...]
    labels: np.ndarray
    probs: np.ndarray
    classification: dict[str, Any]
    saliency: dict[str, np.ndarray]
    center_prior: dict[str, np.ndarray]
    cc_test: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON values: mean/median/std of each saliency metric."""
        return {
            "split": self.split,
            "n": len(self.dicom_ids),
            "classification": self.classification,
            "saliency": {m: saliency_summary(v) for m, v in self.saliency.items()},
            "center_prior": {m: saliency_summary(v) for m, v in self.center_prior.items()},
            "cc_vs_center_prior": dict(self.cc_test),
        }


def _check_inputs(cfg: ExperimentConfig, store_dir: Path, maps_dir: Path) -> None:
    """The store and maps must have been made with the experiment's data config.

    Raises:
        DataError: naming store.json or gaze_maps.json and the field that differs.
    """
    store = PackedStore.open(store_dir)
    want = cfg.data.scaled_geometry().model_dump(mode="json")
    if store.geometry != want:
        raise DataError(
            store_dir / STORE_META_FILE,
            f"geometry {store.geometry} is not the experiment's {want}; ingest with its data "
            "config",
            field="geometry",
        )
    meta_path = maps_dir / MAPS_META_FILE
    if not meta_path.is_file():
        raise DataError(meta_path, "missing: gaze maps not computed (run `cxrgaze heatmaps`)")
    made_with = json.loads(meta_path.read_text(encoding="utf-8")).get("heatmap")
    want = cfg.data.scaled_heatmap().model_dump(mode="json")
    if made_with != want:
        raise DataError(
            meta_path, f"maps made with {made_with}, the experiment wants {want}", field="heatmap"
        )


def _resume_view(config: dict, key: str) -> object:
    """The part of a config section that the checkpoints depend on: how ingest treats
    identifying DICOM fields does not change the pixels or labels trained on."""
    section = config.get(key)
    if key == "data" and isinstance(section, dict):
        return {k: v for k, v in section.items() if k != "phi_policy"}
    return section


def _record_config(cfg: ExperimentConfig, workdir: Path) -> None:
    """Write the config beside the checkpoints; refuse checkpoints of another network or data."""
    path = workdir / CONFIG_FILE
    current = cfg.model_dump(mode="json")
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in _RESUME_KEYS if _resume_view(saved, k) != _resume_view(current, k)]
        if changed:
            raise ValueError(
                f"{path}: the checkpoints here were trained with other {changed}; "
                "use another workdir"
            )
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


@contextmanager
def _prepared(
    cfg: ExperimentConfig,
    store_dir: Path,
    maps_dir: Path,
    workdir: Path,
    *,
    pretrained: bool = True,
    **fit_options: Any,
) -> Iterator[tuple[nn.Module, Callable[[StageSpec], FitResult]]]:
    """Checked inputs, the config recorded in ``workdir``, ``cfg.num_threads`` torch threads for
    the block, the seeded network (its DenseNet from the config's pretrained weights unless
    ``pretrained`` is False: the caller loads trained weights), and a function that fits it for
    one stage on the train split (selecting on val), checkpointing under ``workdir``
    (``fit_options`` go to ``fit_stage``)."""
    _check_inputs(cfg, store_dir, maps_dir)
    _record_config(cfg, workdir)
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        seed_everything(cfg.seed)
        model = build_model(cfg.model, pretrained=pretrained)
        loaders = split_loaders(
            open_split(store_dir, maps_dir, "train"),
            open_split(store_dir, maps_dir, "val"),
            seed=cfg.seed,
        )

        def fit(spec: StageSpec) -> FitResult:
            return run_stages(
                model,
                [spec],
                loaders,
                checkpoint_dir=workdir / CHECKPOINTS_DIR,
                seed=cfg.seed,
                **fit_options,
            )[spec.name]

        yield model, fit
    finally:
        torch.set_num_threads(threads)


def train_experiment(
    cfg: ExperimentConfig,
    store_dir: Path,
    maps_dir: Path,
    workdir: Path,
    *,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    device: torch.device | str = "cpu",
    precision: PrecisionName | None = None,
) -> ExperimentResult:
    """Train every enabled stage of ``cfg`` on the store's train split, selecting on val.

    The network is ``build_model(cfg.model)`` initialised under ``cfg.seed``; each stage starts
    from the previous one's best weights (:func:`~model_lib.training.run_stages`) with batches
    shuffled from ``cfg.seed``, so a CPU run is repeatable. Torch uses ``cfg.num_threads``
    intra-op threads during the call when set. With checkpoints already in ``workdir`` (same
    network, data and seed), training resumes; finished stages only reload their best weights.

    Raises:
        DataError: the store or maps were made with another data config.
        ValueError: ``cfg`` enables no stage, or ``workdir`` holds another experiment.
    """
    store_dir, maps_dir, workdir = Path(store_dir), Path(maps_dir), Path(workdir)
    stages = cfg.enabled_stages
    if not stages:
        raise ValueError("the experiment enables no stage")
    options = {"device": device, "callbacks": callbacks, "progress": progress,
               "precision": precision or cfg.precision}  # fmt: skip
    with _prepared(cfg, store_dir, maps_dir, workdir, **options) as (model, fit):
        results: dict[str, FitResult] = {}
        seconds: dict[str, float] = {}
        for spec in stages:
            start = time.perf_counter()
            results[spec.name] = fit(spec)
            seconds[spec.name] = time.perf_counter() - start
    return ExperimentResult(
        model=model,
        stages=results,
        final_weights=results[stages[-1].name].best_checkpoint,
        stage_seconds=seconds,
    )


@dataclass(frozen=True)
class StageOutcome:
    """What :func:`train_stage` produced: the stage's fit (None when the config disables the
    stage) and the weights file the next stage starts from."""

    fit: FitResult | None
    weights: Path
    seconds: float


def train_stage(
    cfg: ExperimentConfig,
    stage: str,
    store_dir: Path,
    maps_dir: Path,
    workdir: Path,
    weights_out: Path,
    *,
    init_weights: Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    device: torch.device | str = "cpu",
    precision: PrecisionName | None = None,
) -> StageOutcome:
    """Train the one stage ``stage`` of ``cfg``, as a pipeline step does: from the weights a
    previous step wrote (``init_weights``) or, for the first stage, from the seeded
    initialisation; then write the best weights to ``weights_out`` (a checkpoint file with a
    ``model`` entry, written atomically).

    Checkpoints go to ``<workdir>/checkpoints/<stage>/``, so a killed step resumes there. A stage
    the config disables trains nothing: the input weights pass through unchanged.

    Raises:
        DataError: the store or maps were made with another data config.
        KeyError: ``cfg`` has no such stage.
        ValueError: no ``init_weights`` for a disabled first stage, or weights that do not fit.
    """
    spec = cfg.stage(stage)
    store_dir, maps_dir, workdir = Path(store_dir), Path(maps_dir), Path(workdir)
    weights_out = Path(weights_out)
    weights_out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not spec.enabled:
        if init_weights is None:
            raise ValueError(f"stage {stage} is disabled and there are no weights to pass on")
        save_checkpoint(weights_out, {"model": load_checkpoint(init_weights)["model"]})
        return StageOutcome(fit=None, weights=weights_out, seconds=time.perf_counter() - start)
    options = {"device": device, "callbacks": callbacks, "progress": progress,
               "precision": precision or cfg.precision}  # fmt: skip
    # Only the first stage starts from the pretrained DenseNet; a later one loads its weights.
    pretrained = init_weights is None
    with _prepared(cfg, store_dir, maps_dir, workdir, pretrained=pretrained, **options) as (
        model,
        fit_one,
    ):
        if init_weights is not None:
            load_model_weights(model, Path(init_weights))
        fit = fit_one(spec)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(weights_out, {"model": state, "stage": stage, "best_epoch": fit.best_epoch})
    return StageOutcome(fit=fit, weights=weights_out, seconds=time.perf_counter() - start)


def fixated_pixels(x: np.ndarray, y: np.ndarray, transform: CanvasTransform) -> np.ndarray:
    """The target pixels holding at least one gaze point: bool (out_h, out_w).

    A point (native pixel coordinates, x = column) counts at the native pixel containing it,
    which lands in the target pixel whose canvas block (``stride_y`` x ``stride_x`` canvas
    pixels from its sample) contains it. Points off the image are dropped, and so is the exact
    (0, 0) the release writes for off-image gaze on small images, as the gaze maps drop it.
    """
    t = transform
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = (x >= 0) & (x < t.native_w) & (y >= 0) & (y < t.native_h) & ~((x == 0) & (y == 0))
    tx, ty = t.native_to_target(np.floor(x[keep]), np.floor(y[keep]))
    # A rounded fit can put the image's last native pixel a fraction past the canvas edge.
    col = np.clip(np.floor(tx).astype(np.int64), 0, t.out_w - 1)
    row = np.clip(np.floor(ty).astype(np.int64), 0, t.out_h - 1)
    mask = np.zeros((t.out_h, t.out_w), dtype=bool)
    mask[row, col] = True
    return mask


def fixation_maps(store_dir: Path, split: str, source: str = "gaze") -> np.ndarray:
    """Binary fixation maps (N, H, W) of a store split, for NSS and AUC-Judd.

    ``source`` is the heatmap source: ``"gaze"`` uses the raw gaze samples, ``"fixations"`` and
    ``"fixations_duration"`` the fixations. Each image's points go through its own
    :class:`CanvasTransform` (the manifest's transform columns) into :func:`fixated_pixels`.

    Raises:
        DataError: an image has no such point inside it (names the store and the image).
    """
    store_dir = Path(store_dir)
    part = PackedStore.open(store_dir).split(split)
    kind = "gaze" if source == "gaze" else "fixation"
    maps = np.zeros(part.images.shape, dtype=bool)
    for i, row in enumerate(part.manifest.itertuples(index=False)):
        transform = CanvasTransform(**{c: getattr(row, c) for c in TRANSFORM_COLUMNS})
        events = part.points_for(i)
        events = events[events["source"] == kind]
        maps[i] = fixated_pixels(events["x"].to_numpy(), events["y"].to_numpy(), transform)
        if not maps[i].any():
            raise DataError(
                store_dir, f"image {row.dicom_id}: no {kind} point inside the image", field="points"
            )
    return maps


def saliency_scores(
    pred: np.ndarray, gt: np.ndarray, fixations: np.ndarray
) -> dict[str, np.ndarray]:
    """The five saliency metrics per image: predicted and ground-truth maps (N, H, W) (each
    sum-normalised inside the metrics), binary fixation maps (N, H, W) -> metric -> (N,)."""
    return {
        "kld": kld(pred, gt),
        "cc": cc(pred, gt),
        "sim": sim(pred, gt),
        "nss": nss(pred, fixations),
        "auc_judd": auc_judd(pred, fixations),
    }


def evaluate_experiment(
    model: nn.Module,
    cfg: ExperimentConfig,
    store_dir: Path,
    maps_dir: Path,
    *,
    split: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
) -> EvaluationResult:
    """Score ``model`` on a split of the store (None: ``cfg.evaluation_split``), next to the
    center prior of the training maps.

    The ground truth is the split's gaze maps; NSS and AUC-Judd use :func:`fixation_maps` of the
    configured heatmap source. The center prior (:class:`CenterPriorBaseline`) is fit on the
    train split's maps and labels.

    Raises:
        DataError: the store or maps were made with another data config.
        ValueError: the model's outputs are not finite, or a class is missing from the split.
    """
    store_dir, maps_dir = Path(store_dir), Path(maps_dir)
    _check_inputs(cfg, store_dir, maps_dir)
    split = split or cfg.evaluation_split
    data = open_split(store_dir, maps_dir, split)
    loader = BatchLoader(data, batch_size)
    train = open_split(store_dir, maps_dir, "train")
    prior = CenterPriorBaseline.fit(train.maps, train.labels, num_classes=cfg.model.num_classes)
    ours = predict(model, loader, device)
    theirs = predict(prior, loader, device)
    gt = np.asarray(data.maps, dtype=np.float64)[ours["indices"]]
    fixations = fixation_maps(store_dir, split, cfg.data.heatmap.source)[ours["indices"]]
    saliency = saliency_scores(ours["saliency"], gt, fixations)
    center_prior = saliency_scores(theirs["saliency"], gt, fixations)
    t, p = paired_t_test(saliency["cc"], center_prior["cc"])
    return EvaluationResult(
        split=split,
        dicom_ids=tuple(data.dicom_ids[i] for i in ours["indices"]),
        labels=ours["labels"],
        probs=ours["probs"],
        classification=classification_report(ours["probs"], ours["labels"]),
        saliency=saliency,
        center_prior=center_prior,
        cc_test={
            "mean_difference": float(np.mean(saliency["cc"] - center_prior["cc"])),
            "t": t,
            "p_value": p,
        },
    )
