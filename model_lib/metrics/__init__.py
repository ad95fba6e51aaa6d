"""Evaluation metrics: saliency maps, classification, calibration, and comparisons between two
models.

numpy in (torch tensors accepted), numpy or plain floats out; no scipy or scikit-learn.
"""

from model_lib.metrics.calibration import Reliability, expected_calibration_error, reliability
from model_lib.metrics.classification import (
    accuracy,
    classification_report,
    confusion_matrix,
    macro_auc,
    micro_auc,
    per_class_auc,
    precision_recall_f1,
    predictions,
    roc_auc,
    roc_curve,
    weighted_auc,
)
from model_lib.metrics.compare import (
    bootstrap_auc_ci,
    bootstrap_auc_difference,
    bootstrap_ci,
    paired_t_test,
    student_t_sf,
)
from model_lib.metrics.saliency import auc_judd, cc, kld, nss, saliency_summary, sim

__all__ = [
    "Reliability",
    "accuracy",
    "auc_judd",
    "bootstrap_auc_ci",
    "bootstrap_auc_difference",
    "bootstrap_ci",
    "cc",
    "classification_report",
    "confusion_matrix",
    "expected_calibration_error",
    "kld",
    "macro_auc",
    "micro_auc",
    "nss",
    "paired_t_test",
    "per_class_auc",
    "precision_recall_f1",
    "predictions",
    "reliability",
    "roc_auc",
    "roc_curve",
    "saliency_summary",
    "sim",
    "student_t_sf",
    "weighted_auc",
]
