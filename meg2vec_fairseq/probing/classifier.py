"""The linear probe: a class-weighted logistic regression on standardised pooled features."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

from ..errors import ProbeError
from .metrics import balanced_accuracy, confusion_matrix, macro_f1
from .windows import SPLITS

#: Inverse regularisation strengths tried on the validation split.
DEFAULT_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def check_labels(features: np.ndarray, labels: np.ndarray, split: str) -> None:
    """Check that there is one label per feature row.

    Parameters
    ----------
    features : ndarray, shape (N, D)
        Pooled features of a split.
    labels : ndarray, shape (N,)
        Their labels.
    split : str
        The split's name (for the message).

    Raises
    ------
    ProbeError
        If ``features`` is not 2-D or the counts differ.
    """
    if features.ndim != 2:
        raise ProbeError(f"{split}: features must be (windows, dims), got shape {features.shape}")
    if len(labels) != len(features):
        raise ProbeError(
            f"{split}: {len(labels)} labels for {len(features)} feature rows; labels must match "
            "the features one to one"
        )


def check_probe_options(
    train_fraction: float, c_grid: Sequence[float], seeds: Sequence[int]
) -> None:
    """Check the probe's options before any work.

    Parameters
    ----------
    train_fraction : float
        Fraction of each training class used, in (0, 1].
    c_grid : sequence of float
        Inverse regularisation strengths, each finite and > 0.
    seeds : sequence of int
        Seeds, each >= 0 (NumPy's generators refuse negative ones).

    Raises
    ------
    ProbeError
        For the first value out of range, naming the parameter.
    """
    if not (0 < train_fraction <= 1):  # also False for NaN
        raise ProbeError(f"train_fraction must be in (0, 1], got {train_fraction}")
    if not len(c_grid):
        raise ProbeError("give at least one C")
    for c in c_grid:
        if not (c > 0 and math.isfinite(c)):
            raise ProbeError(f"every C must be a finite number > 0, got {c}")
    for seed in seeds:
        if int(seed) < 0:
            raise ProbeError(f"seeds must be >= 0, got {seed}")


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified random subset.

    Parameters
    ----------
    labels : ndarray of int
        Labels of the candidates.
    fraction : float
        Fraction of each class kept (at least one per class); >= 1 keeps all.
    seed : int
        Seed of the draw.

    Returns
    -------
    ndarray of int
        Sorted indices into ``labels``.
    """
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n = max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(keep))


@dataclass
class FittedProbe:
    """A fitted linear probe: the standardiser and the logistic regression chosen on valid.

    Attributes
    ----------
    scaler : sklearn.preprocessing.StandardScaler
        Fitted on the training features.
    classifier : sklearn.linear_model.LogisticRegression
        The fit whose ``C`` scored best on the validation split.
    C : float
        That ``C``.
    valid_macro_f1 : float
        Its validation macro-F1.
    """

    scaler: object
    classifier: object
    C: float
    valid_macro_f1: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class of each ``(N, D)`` feature row."""
        return self.classifier.predict(self.scaler.transform(features))

    def linear_weights(self) -> Tuple[np.ndarray, np.ndarray]:
        """The probe as ``logits = features @ W.T + b`` on unstandardised features.

        Returns
        -------
        weight : ndarray, shape (K, D)
        bias : ndarray, shape (K,)
            One row per class of ``classifier.classes_`` (the classes seen in training), the
            standardisation folded in; for two classes, logistic regression's single score
            ``z`` becomes logits ``(-z/2, z/2)`` (the same softmax probabilities).
        """
        coef = self.classifier.coef_ / self.scaler.scale_
        intercept = self.classifier.intercept_ - coef @ self.scaler.mean_
        if coef.shape[0] == 1:
            coef = np.concatenate([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        return coef, intercept


def fit_linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    n_classes: int,
    seed: int = 0,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    max_iter: int = 2000,
) -> FittedProbe:
    """Standardise, fit a class-weighted logistic regression per ``C``, keep the best on valid.

    Parameters
    ----------
    x_train, y_train : ndarray
        ``(N, D)`` training features and ``(N,)`` labels (at least two classes).
    x_valid, y_valid : ndarray
        The validation split, which chooses ``C``.
    n_classes : int
        Number of classes (labels are ``0..n_classes-1``).
    seed : int
        Seed of the solver.
    c_grid : sequence of float
        Inverse regularisation strengths tried.
    max_iter : int
        Solver iterations per fit.

    Returns
    -------
    FittedProbe
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    x_train, x_valid = scaler.transform(x_train), scaler.transform(x_valid)
    best = None
    for c in c_grid:
        classifier = LogisticRegression(
            C=c, class_weight="balanced", max_iter=max_iter, random_state=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(x_train, y_train)
        score = macro_f1(confusion_matrix(y_valid, classifier.predict(x_valid), n_classes))
        if best is None or score > best[0]:
            best = (score, c, classifier)
    score, c, classifier = best
    return FittedProbe(scaler, classifier, float(c), float(score))


def fit_and_score(
    features: Dict[str, np.ndarray],
    labels: Dict[str, np.ndarray],
    n_classes: int,
    seed: int = 0,
    train_fraction: float = 0.8,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    max_iter: int = 2000,
) -> Dict[str, object]:
    """One probe run: standardise, fit per ``C`` on train, pick on valid, score once on test.

    Parameters
    ----------
    features, labels : dict split -> array
        ``(N, D)`` features and ``(N,)`` integer labels for ``train``, ``valid``, ``test``.
    n_classes : int
        Number of classes (labels are ``0..n_classes-1``).
    seed : int
        Seed of the training subset and the solver.
    train_fraction : float
        Fraction of each training class used (1.0: all, and then seeds differ only through
        the feature source).
    c_grid : sequence of float
        Inverse regularisation strengths tried.
    max_iter : int
        Solver iterations per fit.

    Returns
    -------
    dict
        ``C``, ``valid_macro_f1`` (of the chosen C), test ``macro_f1``,
        ``balanced_accuracy`` and ``confusion`` (list of lists), ``n_train``.

    Raises
    ------
    ProbeError
        For impossible options (:func:`check_probe_options`), labels not matching the
        features, or a single class in training.
    """
    check_probe_options(train_fraction, c_grid, [seed])
    for split in SPLITS:
        check_labels(features[split], labels[split], split)
    train_classes = np.unique(labels["train"])
    if len(train_classes) < 2:
        raise ProbeError(
            f"the training split has a single class ({int(train_classes[0])}); a classifier needs "
            "at least two"
        )
    subset = stratified_subset(labels["train"], train_fraction, seed)
    probe = fit_linear_probe(features["train"][subset], labels["train"][subset],
                             features["valid"], labels["valid"], n_classes, seed, c_grid,
                             max_iter)
    matrix = confusion_matrix(labels["test"], probe.predict(features["test"]), n_classes)
    return {
        "seed": seed,
        "C": probe.C,
        "valid_macro_f1": probe.valid_macro_f1,
        "macro_f1": macro_f1(matrix),
        "balanced_accuracy": balanced_accuracy(matrix),
        "confusion": matrix.tolist(),
        "n_train": int(len(subset)),
    }
