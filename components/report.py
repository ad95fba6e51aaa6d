"""The evaluation report: one self-contained HTML page that a reviewer can open from the KFP UI,
the MLflow run or the local output folder.

Every plot is a PNG inside the page (a data URI) and the page has no script and no link out, so
it reads the same offline, in a sandboxed artifact viewer, or years later. Sections: promotion
floors, lineage, diagnosis (tables, ROC, confusion matrix, calibration), gaze saliency against
the baselines, a gallery of test cases, and the training curves of every stage.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components import report_plots as plots
from components.report_plots import SALIENCY_LABELS, StageCurves
from model_lib.metrics import Reliability, saliency_summary
from model_lib.training.evaluate import GALLERY_GROUPS, SaliencyComparison

__all__ = ["SECTIONS", "ReportContent", "StageCurves", "evaluation_html"]

SECTIONS: dict[str, str] = {
    "floors": "Promotion floors",
    "lineage": "Data and model lineage",
    "diagnosis": "Diagnosis",
    "calibration": "Calibration",
    "saliency": "Gaze saliency against the baselines",
    "gallery": "Gallery of test cases",
    "training": "Training curves",
}
"""Section id -> heading, in page order."""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 72em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; font-family: ui-monospace, monospace; font-size: 0.9em; }
.pass { color: #176317; } .fail { color: #a11; } .info { color: #555; }
figure { margin: 1em 0 2em; } figcaption { color: #555; max-width: 60em; }
img { max-width: 100%; }
"""


@dataclass(frozen=True)
class ReportContent:
    """Everything the page shows.

    ``summary``: ``EvaluationResult.to_dict()``; ``probs`` (N, C) and ``labels`` (N,) of the
    split; ``gate_reasons``: the floor checks, each ``"pass: ..."``, ``"fail: ..."`` or
    ``"info: ..."``; ``lineage``: (group, key, value) rows.
    """

    title: str
    summary: Mapping[str, Any]
    probs: np.ndarray
    labels: np.ndarray
    gate_reasons: Sequence[str]
    calibration: Reliability
    saliency: SaliencyComparison
    stages: Sequence[StageCurves] = ()
    lineage: Sequence[tuple[str, str, str]] = field(default_factory=tuple)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"<td>{value:.4f}</td>"
    if isinstance(value, int):
        return f"<td>{value}</td>"
    return f'<td class="text">{html.escape(str(value))}</td>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(image: str, caption: str) -> str:
    return f"<figure>{image}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _floors(reasons: Sequence[str]) -> str:
    items = "".join(
        f'<li class="{html.escape(r.split(":", 1)[0])}">{html.escape(r)}</li>' for r in reasons
    )
    return f"<ul>{items}</ul>" if items else '<p class="info">No floor was checked.</p>'


def _lineage(rows: Sequence[tuple[str, str, str]]) -> str:
    if not rows:
        return '<p class="info">No lineage was recorded for this run.</p>'
    return _table(["", "what", "value"], rows)


def _diagnosis(c: ReportContent) -> str:
    cls = c.summary["classification"]
    names = cls["class_names"]
    overall = [
        ["macro AUC", cls["auc_macro"]],
        ["micro AUC", cls["auc_micro"]],
        ["accuracy", cls["accuracy"]],
        ["macro F1", cls["macro"]["f1"]],
    ]
    per_class = [
        [name, v["auc"], v["precision"], v["recall"], v["f1"], v["support"]]
        for name, v in cls["per_class"].items()
    ]
    confusion = [[names[i], *row] for i, row in enumerate(cls["confusion_matrix"])]
    return (
        _table(["metric", "value"], overall)
        + _table(["class", "AUC", "precision", "recall", "F1", "support"], per_class)
        + _figure(
            plots.roc_plot(c.probs, c.labels, names),
            "ROC curve of each class against the other two, from the softmax probability of "
            "that class; the dotted diagonal is a classifier that guesses.",
        )
        + "<h3>Confusion matrix (rows: true class, columns: predicted class)</h3>"
        + _table(["", *names], confusion)
        + _figure(
            plots.confusion_plot(cls["confusion_matrix"], names),
            "The same counts; the colour is the share of each true class's images.",
        )
    )


def _calibration(rel: Reliability) -> str:
    rows = [
        [f"{lo:.1f} - {hi:.1f}", n, "" if n == 0 else conf, "" if n == 0 else acc]
        for lo, hi, n, conf, acc in zip(
            rel.edges[:-1],
            rel.edges[1:],
            rel.counts.tolist(),
            rel.confidence,
            rel.accuracy,
            strict=True,
        )
    ]
    return (
        f"<p>Expected calibration error (ECE) <b>{rel.ece:.4f}</b>, largest bin gap (MCE) "
        f"{rel.mce:.4f}, over {len(rel.counts)} equal-width confidence bins.</p>"
        + _figure(
            plots.calibration_plot(rel),
            "Each image's confidence is its highest class probability; it is correct when that "
            "class is its label. Bars: the accuracy of the images in each confidence bin; dots: "
            "their mean confidence. A calibrated model's bars reach the diagonal. ECE is the "
            "image-weighted mean gap between accuracy and confidence. Bottom: images per bin.",
        )
        + _table(["confidence bin", "images", "mean confidence", "accuracy"], rows)
    )


def _saliency(c: ReportContent) -> str:
    comparison = c.saliency
    names = list(comparison.scores)
    rows = []
    for metric, label in SALIENCY_LABELS.items():
        cells = []
        for name in names:
            s = saliency_summary(comparison.scores[name][metric])
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f} (median {s['median']:.3f})")
        rows.append([label, *cells])
    tests = [
        [f"model - {name}", t["mean_difference"], f"{t['t']:.2f}", f"{t['p_value']:.3g}"]
        for name, t in comparison.cc_tests.items()
    ]
    skipped = "".join(
        f"<li>{html.escape(name)}: {html.escape(why)}</li>"
        for name, why in comparison.skipped.items()
    )
    return (
        "<p>Per-image metrics on sum-normalised maps against the radiologist's gaze map "
        "(KLD, CC, SIM) and gaze points (NSS, AUC-Judd): mean ± std (median). The center prior "
        "is the mean training gaze map for every image; Grad-CAM reads the model's DenseNet "
        "classifier's class-activation map as a gaze prediction.</p>"
        + _table(["metric", *names], rows)
        + "<h3>Paired t-test of per-image CC</h3>"
        + _table(["comparison", "mean CC difference", "t", "p"], tests)
        + (f"<p>Baselines left out:</p><ul>{skipped}</ul>" if skipped else "")
        + _figure(
            plots.distributions_plot(comparison.scores),
            "Distribution over the test images of each metric, for the model and each "
            "baseline: the box spans the quartiles with the median inside, whiskers reach "
            "1.5 interquartile ranges, dots are the images.",
        )
    )


def _gallery(c: ReportContent, class_names: Sequence[str]) -> str:
    parts = [
        "<p>Test images with the model's highest, middle and lowest per-image CC. Columns: "
        "the image; the radiologist's gaze map over it; the predicted map over it. Each map "
        "is coloured on its own scale (its maximum is the brightest).</p>"
    ]
    for group in GALLERY_GROUPS:
        cases = [case for case in c.saliency.gallery if case.group == group]
        if cases:
            parts.append(f"<h3>{group.capitalize()} CC</h3>")
            parts.append(plots.gallery_plot(cases, class_names, group))
    return "".join(parts)


def _training(stages: Sequence[StageCurves]) -> str:
    if not stages:
        return '<p class="info">No training history was found for this run.</p>'
    rows = []
    for s in stages:
        best = s.history[s.best_epoch] if s.history and s.best_epoch is not None else {}
        best_loss = best.get("val_loss", "")
        rows.append(
            [
                s.stage,
                len(s.history),
                "" if s.best_epoch is None else s.best_epoch,
                best_loss,
                s.note,
            ]
        )
    page = _table(["stage", "epochs", "best epoch", "best val_loss", "note"], rows)
    if any(s.history for s in stages):
        page += _figure(
            plots.training_plot(stages),
            "Per stage, as each stage's training step logged it: training and validation "
            "loss per epoch (left), the validation scores the stage computes (right: macro "
            "AUC and accuracy of its class head, CC of the saliency head). The dotted line "
            "marks the epoch whose weights the next stage started from.",
        )
    return page


def evaluation_html(c: ReportContent) -> str:
    """The report page: plain HTML, every image an inline PNG, no script, no external URL."""
    names = c.summary["classification"]["class_names"]
    bodies = {
        "floors": _floors(c.gate_reasons),
        "lineage": _lineage(c.lineage),
        "diagnosis": _diagnosis(c),
        "calibration": _calibration(c.calibration),
        "saliency": _saliency(c),
        "gallery": _gallery(c, names),
        "training": _training(c.stages),
    }
    contents = "".join(f'<li><a href="#{key}">{title}</a></li>' for key, title in SECTIONS.items())
    sections = "".join(
        f'<section id="{key}"><h2>{title}</h2>{bodies[key]}</section>'
        for key, title in SECTIONS.items()
    )
    title = html.escape(c.title)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{_STYLE}</style></head><body>
<h1>{title}</h1>
<p>{c.summary["n"]} images of the {html.escape(c.summary["split"])} split.</p>
<nav><ul>{contents}</ul></nav>
{sections}
</body></html>
"""
