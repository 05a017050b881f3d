"""Scores of a classifier: confusion matrix, macro-F1, balanced accuracy and their chance levels."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Count true/predicted label pairs.

    Parameters
    ----------
    y_true, y_pred : sequence of int
        True and predicted labels in ``0..n_classes-1``.
    n_classes : int
        Number of classes.

    Returns
    -------
    ndarray of int64, shape (n_classes, n_classes)
        Counts: row = true class, column = predicted class.
    """
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in the truth.

    Parameters
    ----------
    matrix : ndarray, shape (n_classes, n_classes)
        A :func:`confusion_matrix`.

    Returns
    -------
    float
        Macro-F1 (0 where undefined).

    Notes
    -----
    Classes absent from the true labels are left out (as the LibriBrain evaluation does, which
    scores the classes of its test set); a class that is present but never predicted scores 0.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    return float(f1[present].mean()) if present.any() else 0.0


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean over the classes present in the truth of per-class recall.

    Parameters
    ----------
    matrix : ndarray, shape (n_classes, n_classes)
        A :func:`confusion_matrix`.

    Returns
    -------
    float
        Balanced accuracy (0 for an empty matrix).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float((np.diag(matrix)[present] / support[present]).mean())


def chance_levels(y_true: Sequence[int], n_classes: int) -> Dict[str, float]:
    """Scores of a guesser that picks each of the ``n_classes`` classes uniformly at random.

    Parameters
    ----------
    y_true : sequence of int
        The true labels of the scored split.
    n_classes : int
        Number of classes.

    Returns
    -------
    dict
        ``macro_f1`` and ``balanced_accuracy`` of that guesser.

    Notes
    -----
    For a class of prevalence ``p`` among ``K`` classes the expected precision is ``p`` and the
    expected recall ``1/K``, so its F1 is ``2p / (1 + K p)``; macro-F1 chance is the mean of that
    over the classes present, balanced-accuracy chance is ``1/K``. (Class weighting makes the
    probe's errors closer to uniform guessing than to always answering the majority class, whose
    macro-F1 would be lower still.)
    """
    y_true = np.asarray(y_true, int)
    counts = np.bincount(y_true, minlength=n_classes).astype(np.float64)
    present = counts > 0
    p = counts[present] / counts.sum()
    k = float(n_classes)
    return {
        "macro_f1": float(np.mean(2 * p / (1 + k * p))),
        "balanced_accuracy": 1.0 / k,
    }


def summarise(values: Sequence[float]) -> Dict[str, float]:
    """Summary statistics of scores over seeds.

    Parameters
    ----------
    values : sequence of float
        One score per run.

    Returns
    -------
    dict
        ``mean``, sample standard deviation ``std`` (0 for one value), ``min``, ``max``, ``n``.
    """
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(len(array)),
    }
