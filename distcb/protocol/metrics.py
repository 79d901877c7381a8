"""Which way a metric improves, judged from its name (Keras 2's rule, widened to Keras 3's metrics).

Workers send the direction of every compiled metric when they join (Keras 3
metrics declare it); this rule is the fallback when they cannot, on the
coordinator and on the worker alike.
"""

from __future__ import annotations

import re

# Names as Keras logs them, matched as suffixes (``val_`` and Keras's ``_1``
# de-duplication suffix removed first).
MAX_SUFFIXES = (
    "acc",
    "accuracy",
    "auc",
    "precision",
    "recall",
    "f1_score",
    "fbeta_score",
    "iou",
    "r2_score",
    "cosine_similarity",
    "specificity_at_sensitivity",
    "sensitivity_at_specificity",
    "precision_at_recall",
    "recall_at_precision",
    "true_positives",
    "true_negatives",
)
MIN_SUFFIXES = (
    "loss",
    "error",
    "crossentropy",
    "hinge",
    "mse",
    "mae",
    "mape",
    "msle",
    "rmse",
    "kld",
    "kl_divergence",
    "logcosh",
    "log_cosh",
    "poisson",
    "false_positives",
    "false_negatives",
)


def direction_by_name(metric: str) -> str | None:
    """ "max", "min" or None (cannot tell) for a metric name such as ``val_accuracy``."""
    name = metric.removeprefix("val_").lower()
    name = re.sub(r"_\d+$", "", name)  # Keras de-duplicates metric names as auc_1, auc_2
    if name.endswith(MAX_SUFFIXES):
        return "max"
    if name.endswith(MIN_SUFFIXES):
        return "min"
    return None
