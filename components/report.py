"""The evaluation report: one self-contained HTML page (tables plus embedded PNG plots) that a
reviewer can open from the KFP UI, the MLflow run or the local output folder."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model_lib.metrics import roc_curve

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.pass { color: #176317; } .fail { color: #a11; } .info { color: #555; }
img { max-width: 100%; }
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return (
        f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def roc_figure_html(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> str:
    """One-vs-rest ROC curve of every class, as an embedded PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for c, name in enumerate(class_names):
        fpr, tpr, _ = roc_curve(probs[:, c], labels == c)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def evaluation_html(
    summary: Mapping[str, Any],
    probs: np.ndarray,
    labels: np.ndarray,
    gate_reasons: Sequence[str],
    title: str,
) -> str:
    """The report page of an evaluation summary (``EvaluationResult.to_dict()``), the gate's
    floor checks, and the ROC curves."""
    cls = summary["classification"]
    names = cls["class_names"]
    per_class = [
        [name, v["auc"], v["precision"], v["recall"], v["f1"], v["support"]]
        for name, v in cls["per_class"].items()
    ]
    overall = [
        ["macro AUC", cls["auc_macro"]],
        ["micro AUC", cls["auc_micro"]],
        ["accuracy", cls["accuracy"]],
        ["macro F1", cls["macro"]["f1"]],
    ]
    confusion = [[names[i], *row] for i, row in enumerate(cls["confusion_matrix"])]
    saliency = [
        [metric, stats["mean"], stats["std"], summary["center_prior"][metric]["mean"]]
        for metric, stats in summary["saliency"].items()
    ]
    test = summary["cc_vs_center_prior"]
    checks = "".join(
        f'<li class="{line.split(":", 1)[0]}">{html.escape(line)}</li>' for line in gate_reasons
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{summary["n"]} images of the {html.escape(summary["split"])} split.</p>
<h2>Promotion floors</h2><ul>{checks}</ul>
<h2>Diagnosis</h2>
{_table(["metric", "value"], overall)}
{_table(["class", "AUC", "precision", "recall", "F1", "support"], per_class)}
<h3>Confusion matrix (rows: true, columns: predicted)</h3>
{_table(["", *names], confusion)}
{roc_figure_html(probs, labels, names)}
<h2>Gaze saliency</h2>
{_table(["metric", "model mean", "model std", "center prior mean"], saliency)}
<p>Per-image CC, model minus center prior: mean {test["mean_difference"]:.4f},
paired t = {test["t"]:.2f}, p = {test["p_value"]:.3g}.</p>
</body></html>
"""
