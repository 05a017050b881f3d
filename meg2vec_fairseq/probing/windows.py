"""Labelled windows of preprocessed MEG: the dataset every probe and fine-tuning run reads."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..cli import input_file_problem
from ..constants import MAX_ABS_VALUE, SFREQ
from ..errors import MegDataError, ProbeError
from ..io.manifest import read_manifest
from ..io.segment_file import read_crop

#: The splits of a labelled dataset, in order.
SPLITS = ("train", "valid", "test")



@dataclass
class Window:
    """One labelled window: read ``length`` samples from ``start`` and pool ``pool`` of them.

    Attributes
    ----------
    source : int
        Index into the dataset's list of sources (segment files, pnpl datasets).
    start, length : int
        First sample and number of samples read (the labelled span plus its context).
    pool : (int, int)
        Sample range ``[a, b)`` within the window that is pooled (the labelled span).
    label : int
        Class index.
    split : str
        One of :data:`SPLITS`.
    item : int
        pnpl item index (pnpl datasets read whole items); -1 otherwise.
    row : int
        Line of the labels file it came from (-1: none), for error messages.
    """

    source: int
    start: int
    length: int
    pool: Tuple[int, int]
    label: int
    split: str
    item: int = -1
    row: int = -1


@dataclass
class LabelledDataset:
    """Windows of preprocessed MEG with labels and splits, read through ``read(window)``.

    Attributes
    ----------
    name : str
        Name used in messages and results (e.g. the labels file's name).
    windows : list of Window
        Every labelled window, all splits.
    class_names : list of str
        Class names; a window's ``label`` indexes this list.
    read : callable
        ``read(window) -> ndarray (n_channels, window.length)`` float32.
    sample_rate : float
        Sampling rate of the windows (Hz).
    n_channels : int
        Rows of every window.
    info : dict
        Provenance written into results (files, statistics, times).
    """

    name: str
    windows: List[Window]
    class_names: List[str]
    read: Callable[[Window], np.ndarray]
    sample_rate: float
    n_channels: int
    info: Dict[str, object] = field(default_factory=dict)

    def labels(self, split: str) -> np.ndarray:
        """Labels of the windows of ``split`` (in dataset order), int64."""
        return np.array([w.label for w in self.windows if w.split == split], dtype=np.int64)

    def split_windows(self, split: str) -> List[Window]:
        """The windows of ``split``, in dataset order."""
        return [w for w in self.windows if w.split == split]

    def check(self) -> None:
        """Check that the splits can be probed.

        Raises
        ------
        ProbeError
            If a split is empty, training has a single class, or a class of the valid or
            test split never occurs in training (the classifier could never predict it, and
            macro-F1 would count it as 0 without saying why).
        """
        for split in SPLITS:
            if not self.split_windows(split):
                raise ProbeError(f"{self.name}: the {split} split has no labelled windows")
        train = np.unique(self.labels("train"))
        if len(train) < 2:
            only = self.class_names[int(train[0])]
            raise ProbeError(
                f"{self.name}: the training split has a single class ({only!r}); a classifier "
                "needs at least two"
            )
        for split in ("valid", "test"):
            labels = self.labels(split)
            unseen = sorted(set(np.unique(labels).tolist()) - set(train.tolist()))
            if unseen:
                cls = unseen[0]
                names = ", ".join(repr(self.class_names[c]) for c in unseen)
                raise ProbeError(
                    f"{self.name}: class {names} has {int((labels == cls).sum())} {split} "
                    f"window(s) but none in the training split; the probe cannot learn it "
                    "(move some to train, or drop the class)"
                )


def _stable_fraction(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``text`` and ``seed`` (hash-based split assignment)."""
    digest = hashlib.sha1(f"{seed}:{text}".encode()).hexdigest()
    return int(digest[:12], 16) / float(16**12)


def load_manifest_labels(
    manifest_paths: Union[str, Sequence[str]],
    labels_path: str,
    sample_rate: float = SFREQ,
    context: float = 0.0,
    split_fractions: Tuple[float, float] = (0.7, 0.15),
    split_seed: int = 0,
    allow_overlap: bool = False,
    max_abs_value: Optional[float] = MAX_ABS_VALUE,
) -> LabelledDataset:
    """The generic labelled dataset: manifest(s) of ``.npy`` segments plus a labels TSV.

    Parameters
    ----------
    manifest_paths : str or list of str
        fairseq TSV manifests listing the segments (e.g. ``train.tsv valid.tsv``).
    labels_path : str
        The labels TSV.
    sample_rate : float
        Sampling rate of the segments (converts seconds to samples).
    context : float
        Seconds of signal on each side of a span that feature sources see (clipped at the
        segment's ends); pooling still covers the span only. 0: the span alone.
    split_fractions : (float, float)
        Train and valid fractions of segments when there is no ``split`` column.
    split_seed : int
        Seed of that assignment.
    allow_overlap : bool
        Windows of the same segment whose spans overlap but lie in different splits are an
        error (the test score would measure memorisation); with this, a warning.
    max_abs_value : float or None
        A window holding a value with ``|x|`` above this is an error naming the file (the
        segments are z-scored; see the task's ``max_abs_value``); None or 0: no check.

    Returns
    -------
    LabelledDataset
        Classes are the sorted distinct labels; ``read`` memory-maps the segment and checks
        its shape and values.

    Raises
    ------
    ProbeError
        For a missing file or column, a row with too few or too many fields, an unknown
        segment, a non-finite time or a span outside its segment or shorter than one
        sample, an unknown split, overlapping windows in two splits, or no labels.

    Notes
    -----
    The labels TSV has a header row and one row per labelled window, tab-separated:

    * ``segment`` (required): a segment path exactly as written in a manifest;
    * ``label`` (required): any string (classes are the sorted distinct labels);
    * ``start`` and ``end`` (optional, seconds from the segment's first sample): the time span;
      without them (or left empty) the window is the whole segment;
    * ``split`` (optional): ``train``, ``valid`` or ``test``; without it, whole segments are
      assigned by a stable hash of their path (``split_fractions`` train / valid, rest test),
      so windows of one segment never straddle splits.
    """
    if not (sample_rate > 0 and math.isfinite(sample_rate)):
        raise ProbeError(f"sample_rate must be a finite number > 0, got {sample_rate}")
    if not (context >= 0 and math.isfinite(context)):
        raise ProbeError(f"context must be a finite number >= 0, got {context}")
    if isinstance(manifest_paths, str):
        manifest_paths = [manifest_paths]
    segments: Dict[str, Tuple[str, int]] = {}
    for manifest_path in manifest_paths:
        try:  # the task's own manifest parser; channel counts are checked per window later
            root, rows, _ = read_manifest(manifest_path, expected_channels=0, check_files=False)
        except MegDataError as err:
            raise ProbeError(str(err)) from None
        for row in rows:
            segments[row.relative_path] = (os.path.join(root, row.relative_path), row.num_samples)
    problem = input_file_problem(labels_path)
    if problem:
        raise ProbeError(f"{labels_path}: labels file {problem}")
    with open(labels_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        header = reader.fieldnames or []
        missing = [c for c in ("segment", "label") if c not in header]
        if missing:
            raise ProbeError(
                f"{labels_path}: missing column(s) {', '.join(missing)} (header: {header})"
            )
        if ("start" in header) != ("end" in header):
            raise ProbeError(f"{labels_path}: give both 'start' and 'end' columns, or neither")
        raw_rows = []
        for row in reader:
            where = f"{labels_path}, line {reader.line_num}"
            # DictReader fills a short row with None and files extra fields under None
            n_fields = len(header) - sum(v is None for v in row.values()) + len(
                row.get(None) or []
            )
            if None in row or any(row[c] is None for c in header):
                raise ProbeError(
                    f"{where}: {n_fields} tab-separated field(s), the header has {len(header)}"
                )
            if not row["label"].strip():
                raise ProbeError(f"{where}: empty label")
            raw_rows.append((reader.line_num, row))
    if not raw_rows:
        raise ProbeError(f"{labels_path}: no label rows")

    class_names = sorted({row["label"] for _, row in raw_rows})
    class_index = {name: i for i, name in enumerate(class_names)}
    paths: List[str] = []
    path_index: Dict[str, int] = {}
    context_samples = int(round(context * sample_rate))
    windows = []
    for number, row in raw_rows:
        where = f"{labels_path}, line {number}"
        segment = row["segment"]
        if segment not in segments:
            raise ProbeError(f"{where}: segment {segment!r} is not in {', '.join(manifest_paths)}")
        path, n_samples = segments[segment]
        if row.get("start") not in (None, "") or row.get("end") not in (None, ""):
            try:
                start_s, end_s = float(row["start"]), float(row["end"])
            except (TypeError, ValueError):
                raise ProbeError(f"{where}: start/end must be numbers (seconds)") from None
            if not (math.isfinite(start_s) and math.isfinite(end_s)):
                raise ProbeError(f"{where}: start/end must be finite, got {start_s}, {end_s}")
            a, b = int(round(start_s * sample_rate)), int(round(end_s * sample_rate))
            if a < 0 or b > n_samples or b <= a:
                raise ProbeError(
                    f"{where}: span [{start_s}, {end_s}) s is empty or outside segment "
                    f"{segment!r} ({n_samples / sample_rate:g} s = {n_samples} samples)"
                )
        else:
            a, b = 0, n_samples
        if "split" in header and row.get("split"):
            split = row["split"]
            if split not in SPLITS:
                raise ProbeError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        else:
            u = _stable_fraction(segment, split_seed)
            train_fraction, valid_fraction = split_fractions
            split = (
                "train"
                if u < train_fraction
                else "valid" if u < train_fraction + valid_fraction else "test"
            )
        if path not in path_index:
            path_index[path] = len(paths)
            paths.append(path)
        start = max(0, a - context_samples)
        stop = min(n_samples, b + context_samples)
        windows.append(
            Window(path_index[path], start, stop - start, (a - start, b - start),
                   class_index[row["label"]], split, row=number)
        )
    overlap = find_split_overlap(windows)
    if overlap is not None:
        first, second, count = overlap
        message = (
            f"{labels_path}, lines {first.row} ({first.split}) and {second.row} "
            f"({second.split}): overlapping windows of segment {paths[first.source]} in two "
            f"splits ({count} such pair(s) at least); test scores would measure memorisation"
        )
        if not allow_overlap:
            raise ProbeError(f"{message}; fix the splits or pass allow_overlap=True")
        warnings.warn(f"{message} (allowed by allow_overlap=True)", stacklevel=2)

    n_channels = _npy_channels(paths[0])

    def read(window: Window) -> np.ndarray:
        crop, shape, problem = read_crop(
            paths[window.source], window.start, window.length, max_abs_value,
            hint="segments are expected z-scored; max_abs_value=0 disables this check",
        )
        if len(shape) != 2 or shape[0] != n_channels:
            raise ProbeError(
                f"{paths[window.source]}: shape {shape}, expected ({n_channels}, time)"
            )
        if crop.shape[1] != window.length:
            raise ProbeError(
                f"{paths[window.source]}: holds {shape[1]} samples, fewer than the "
                f"manifest says (window ends at {window.start + window.length})"
            )
        if problem:
            raise ProbeError(
                f"{paths[window.source]}: {problem} in the window of {labels_path}, "
                f"line {window.row}"
            )
        return crop

    return LabelledDataset(
        name=os.path.basename(labels_path),
        windows=windows,
        class_names=class_names,
        read=read,
        sample_rate=sample_rate,
        n_channels=n_channels,
        info={"labels": os.path.abspath(labels_path), "manifests": list(manifest_paths),
              "context_s": context},
    )


def find_split_overlap(windows: Sequence[Window]) -> Optional[Tuple[Window, Window, int]]:
    """The first pair of windows of one source whose labelled spans overlap across splits.

    Parameters
    ----------
    windows : sequence of Window
        Windows of all splits.

    Returns
    -------
    tuple or None
        ``(earlier, later, number of overlapping pairs found)``, or None without overlap.

    Notes
    -----
    Spans are the pooled ranges (context excluded). One sweep per source in start order,
    keeping for each split the window that reaches furthest: any overlap with a split shows
    up against it.
    """
    by_source: Dict[int, List[Tuple[int, int, Window]]] = {}
    for w in windows:
        by_source.setdefault(w.source, []).append((w.start + w.pool[0], w.start + w.pool[1], w))
    first: Optional[Tuple[Window, Window]] = None
    count = 0
    for spans in by_source.values():
        spans.sort(key=lambda span: (span[0], span[1]))
        furthest: Dict[str, Tuple[int, Window]] = {}
        for a, b, w in spans:
            for split, (end, other) in furthest.items():
                if split != w.split and end > a:
                    count += 1
                    if first is None:
                        first = (other, w)
            if w.split not in furthest or b > furthest[w.split][0]:
                furthest[w.split] = (b, w)
    return None if first is None else (first[0], first[1], count)


def _npy_channels(path: str) -> int:
    """Rows of the ``.npy`` array at ``path`` (:class:`ProbeError` if unreadable)."""
    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError) as err:
        raise ProbeError(f"{path}: cannot read segment ({err})") from None


