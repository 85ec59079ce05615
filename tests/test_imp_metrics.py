"""Task metrics against values worked out by hand."""
import math

import pytest

from llmprune.tickets.bert.task_metrics import compute_metrics, main_metric

PRED = [1, 0, 1, 1]
GOLD = [1, 1, 1, 0]


def test_accuracy_f1_matthews_by_hand():
    assert compute_metrics("accuracy", PRED, GOLD) == {"accuracy": 0.5}
    # TP 2, FP 1, FN 1, TN 0
    f1 = compute_metrics("f1", PRED, GOLD)
    assert f1["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1)) and f1["accuracy"] == 0.5
    mcc = compute_metrics("matthews", PRED, GOLD)["matthews"]
    assert mcc == pytest.approx((2 * 0 - 1 * 1) / math.sqrt(3 * 3 * 1 * 1))


def test_pearson_spearman_by_hand():
    scores = compute_metrics("correlation", [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0])
    # deviations x: -1.5 -0.5 0.5 1.5; y: -1.75 0.25 1.25 0.25 -> 3.5 / sqrt(5 * 4.75)
    assert scores["pearson"] == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    # ranks of y with the tie shared: 1, 2.5, 4, 2.5 -> 3 / sqrt(5 * 4.5)
    assert scores["spearman"] == pytest.approx(3 / math.sqrt(5 * 4.5))
    assert compute_metrics("correlation", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_main_metric_per_family():
    assert [main_metric(f) for f in ("accuracy", "f1", "matthews", "correlation")] == \
        ["accuracy", "f1", "matthews", "pearson"]
