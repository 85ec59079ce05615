"""The official metric of each task family, from predictions and gold labels.

Families: ``accuracy``; ``f1`` (binary F1 of class 1, with accuracy; MRPC, QQP);
``matthews`` (Matthews correlation, with accuracy; CoLA); ``correlation`` (Pearson and
Spearman; STS-B). ``main_metric`` names the number that IMP compares across rounds.
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import LLMPruneError

MAIN = {"accuracy": "accuracy", "f1": "f1", "matthews": "matthews", "correlation": "pearson"}


def main_metric(family: str) -> str:
    if family not in MAIN:
        raise LLMPruneError(f"unknown metric family '{family}' (use {', '.join(MAIN)})")
    return MAIN[family]


def _finite(value: float) -> float:
    # Constant predictions make correlations undefined; 0 is the conventional score.
    return 0.0 if value is None or math.isnan(value) else float(value)


def compute_metrics(family: str, predictions, labels) -> dict[str, float]:
    """Metrics of one family; classification takes predicted class ids, regression takes scores."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    main_metric(family)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.size == 0:
        raise LLMPruneError(f"metric needs as many predictions as labels ({predictions.shape} vs {labels.shape})")
    if family == "correlation":
        if np.std(predictions) == 0 or np.std(labels) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": _finite(pearsonr(predictions, labels)[0]),
                "spearman": _finite(spearmanr(predictions, labels)[0])}
    result = {"accuracy": float(np.mean(predictions == labels))}
    if family == "f1":
        result["f1"] = float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))
    elif family == "matthews":
        result["matthews"] = _finite(matthews_corrcoef(labels, predictions))
    return result
