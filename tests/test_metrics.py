import math

import numpy as np
import pytest

from pretune import metrics


def test_accuracy_and_f1():
    predictions, targets = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    assert metrics.accuracy(predictions, targets) == pytest.approx(0.6)
    # positive class 1: tp=2, fp=1, fn=1 -> F1 = 4/6
    assert metrics.binary_f1(predictions, targets) == pytest.approx(2 / 3)
    assert metrics.macro_f1(predictions, targets) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_mcc_matches_binary_formula():
    predictions, targets = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.mcc(predictions, targets, 2) == pytest.approx(expected)
    assert metrics.mcc(np.zeros(4), np.array([0, 1, 0, 1]), 2) == 0.0  # undefined -> 0


def test_pearson_and_dispatch():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics.compute("pearson", x, 2 * x + 1) == pytest.approx(1.0)
    assert metrics.all_metrics("mcc", np.array([0, 1]), np.array([0, 1]), 2) == {"mcc": 1.0, "accuracy": 1.0, "macro_f1": 1.0}


def test_confusion_matrix_rows_are_truth():
    matrix = metrics.confusion_matrix([0, 1, 1], [0, 0, 1], 2)
    assert matrix.tolist() == [[1, 1], [0, 1]]
