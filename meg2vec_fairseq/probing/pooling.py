"""Pooling of a source's frames into one feature vector per labelled window."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import ProbeError
from .windows import LabelledDataset

#: Pooling of the frames of a window: their mean, or their mean and standard deviation.
POOLINGS = ("mean", "meanstd")


def pool_frames(
    frames: np.ndarray, centres: np.ndarray, pool: Tuple[int, int], pooling: str = "meanstd"
) -> np.ndarray:
    """Pool the frames of one window whose centre lies in samples ``[a, b)``.

    Parameters
    ----------
    frames : ndarray, shape (T, D)
        The window's frames.
    centres : ndarray, shape (T,)
        Sample position of each frame's centre.
    pool : (int, int)
        The sample range ``[a, b)`` pooled.
    pooling : str
        ``"mean"`` (``D`` values) or ``"meanstd"`` (``2 D``: mean then std).

    Returns
    -------
    ndarray of float64
        The pooled vector.

    Raises
    ------
    ProbeError
        For an unknown ``pooling``.

    Notes
    -----
    If no frame centre falls in the range, the frame nearest to its middle is used.
    """
    a, b = pool
    selected = (centres >= a) & (centres < b)
    if not selected.any():
        selected = np.zeros(len(centres), bool)
        selected[int(np.argmin(np.abs(centres - (a + b - 1) / 2.0)))] = True
    chosen = frames[selected].astype(np.float64)
    if pooling == "mean":
        return chosen.mean(axis=0)
    if pooling == "meanstd":
        return np.concatenate([chosen.mean(axis=0), chosen.std(axis=0)])
    raise ProbeError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def feature_matrix(
    dataset: LabelledDataset, source, split: str, pooling: str = "meanstd",
    batch_size: int = 64,
) -> np.ndarray:
    """Pooled features of the windows of one split.

    Parameters
    ----------
    dataset : LabelledDataset
        The windows.
    source : RawSource or ModelSource
        Anything with ``frames(batch)``, ``min_samples`` and ``name``.
    split : str
        The split read.
    pooling : str
        See :func:`pool_frames`.
    batch_size : int
        Windows read and passed to the source at once (batches never mix lengths).

    Returns
    -------
    ndarray of float64, shape (N, D')
        One row per window of ``split``, in dataset order.

    Raises
    ------
    ProbeError
        If a window is shorter than the source needs (one frame of a model).
    """
    windows = dataset.split_windows(split)
    out: List[Optional[np.ndarray]] = [None] * len(windows)
    by_length: Dict[int, List[int]] = {}
    for i, window in enumerate(windows):
        if window.length < source.min_samples:
            raise ProbeError(
                f"{dataset.name}: a {split} window has {window.length} samples, fewer than the "
                f"{source.min_samples} the {source.name} features need (use a longer context "
                "or longer spans)"
            )
        by_length.setdefault(window.length, []).append(i)
    for indices in by_length.values():
        for lo in range(0, len(indices), batch_size):
            chunk = indices[lo : lo + batch_size]
            batch = np.stack([dataset.read(windows[i]) for i in chunk])
            frames, centres = source.frames(batch)
            for row, i in enumerate(chunk):
                out[i] = pool_frames(frames[row], centres, windows[i].pool, pooling)
    return np.stack(out).astype(np.float64)
