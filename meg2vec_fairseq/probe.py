"""Linear probing of frozen features: does a feature source make labels linearly decodable?

One code path for every feature source, so the comparison is fair:

1. a labelled dataset yields windows of preprocessed MEG ``(channels, samples)`` with a label,
   a split (train / valid / test) and the sample range to pool over;
2. a feature source maps a batch of windows to frames ``(B, T', D)`` plus the sample position
   of each frame: :class:`RawSource` (the sensors themselves, one frame per sample),
   :class:`ModelSource` (a ``meg2vec``: a checkpoint, or the same architecture with fresh
   weights, any Transformer layer or the CNN output);
3. frames whose centre lies in the window's pooling range are pooled (mean, or mean and
   standard deviation, per dimension) into one vector per window;
4. per seed: a stratified random subset of the training windows (``train_fraction``), features
   standardised on it, a class-weighted logistic regression for each regularisation strength
   ``C``; the ``C`` with the best validation macro-F1 is scored once on the test split.

Metrics: macro-F1 (the LibriBrain competition metric), balanced accuracy, and the chance level
of each (:func:`chance_levels`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .cli import input_file_problem
from .data.meg_dataset import (
    DEFAULT_MAX_ABS_VALUE,
    MegDataError,
    crop_value_problem,
    read_manifest,
)
from .errors import ProbeError  # noqa: F401  (re-exported)
from .features import CNN_LAYER, CheckpointError, extract_features, load_meg2vec, n_layers
from .models.meg2vec import conv_frame_geometry

SPLITS = ("train", "valid", "test")
POOLINGS = ("mean", "meanstd")
DEFAULT_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)




# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean over classes present in the truth of per-class F1 (0 where undefined).

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
    """Mean over classes present in the truth of per-class recall."""
    matrix = np.asarray(matrix, dtype=np.float64)
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float((np.diag(matrix)[present] / support[present]).mean())


def chance_levels(y_true: Sequence[int], n_classes: int) -> Dict[str, float]:
    """Scores of a guesser that picks each of the ``n_classes`` classes uniformly at random.

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
    """Mean, sample standard deviation (0 for one value), min and max."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(len(array)),
    }


# --------------------------------------------------------------------------------------------
# Labelled windows
# --------------------------------------------------------------------------------------------


@dataclass
class Window:
    """One labelled window: read ``length`` samples from ``start`` and pool ``pool`` of them."""

    source: int  # index into the dataset's list of sources (segments / pnpl datasets)
    start: int
    length: int
    pool: Tuple[int, int]  # sample range within the window, [a, b)
    label: int
    split: str
    item: int = -1  # pnpl item index (pnpl datasets read whole items)
    row: int = -1  # line of the labels file it came from (-1: none), for error messages


@dataclass
class LabelledDataset:
    """Windows of preprocessed MEG with labels and splits, read through ``read(window)``."""

    name: str
    windows: List[Window]
    class_names: List[str]
    read: Callable[[Window], np.ndarray]
    sample_rate: float
    n_channels: int
    info: Dict[str, object] = field(default_factory=dict)

    def labels(self, split: str) -> np.ndarray:
        return np.array([w.label for w in self.windows if w.split == split], dtype=np.int64)

    def split_windows(self, split: str) -> List[Window]:
        return [w for w in self.windows if w.split == split]

    def check(self) -> None:
        """Raise :class:`ProbeError` if a split is empty, training has a single class, or a
        class of the valid or test split never occurs in training (the classifier could never
        predict it, and macro-F1 would count it as 0 without saying why)."""
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
    digest = hashlib.sha1(f"{seed}:{text}".encode()).hexdigest()
    return int(digest[:12], 16) / float(16**12)


def load_manifest_labels(
    manifest_paths: Union[str, Sequence[str]],
    labels_path: str,
    sample_rate: float = 250.0,
    context: float = 0.0,
    split_fractions: Tuple[float, float] = (0.7, 0.15),
    split_seed: int = 0,
    allow_overlap: bool = False,
    max_abs_value: Optional[float] = DEFAULT_MAX_ABS_VALUE,
) -> LabelledDataset:
    """The generic labelled dataset: manifest(s) of ``.npy`` segments plus a labels TSV.

    The labels TSV has a header row and one row per labelled window, tab-separated:

    * ``segment`` (required): a segment path exactly as written in a manifest;
    * ``label`` (required): any string (classes are the sorted distinct labels);
    * ``start`` and ``end`` (optional, seconds from the segment's first sample): the time span;
      without them (or left empty) the window is the whole segment;
    * ``split`` (optional): ``train``, ``valid`` or ``test``; without it, whole segments are
      assigned by a stable hash of their path (``split_fractions`` train / valid, rest test),
      so windows of one segment never straddle splits.

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

    Raises
    ------
    ProbeError
        For a missing file or column, a row with too few or too many fields, an unknown
        segment, a non-finite time or a span outside its segment or shorter than one
        sample, an unknown split, overlapping windows in two splits, or no labels.
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
            raise ProbeError(f"{message}; fix the splits or pass --allow-overlap")
        warnings.warn(f"{message} (allowed by --allow-overlap)", stacklevel=2)

    n_channels = _npy_channels(paths[0])

    def read(window: Window) -> np.ndarray:
        array = np.load(paths[window.source], mmap_mode="r", allow_pickle=False)
        if array.ndim != 2 or array.shape[0] != n_channels:
            raise ProbeError(
                f"{paths[window.source]}: shape {array.shape}, expected ({n_channels}, time)"
            )
        crop = np.array(array[:, window.start : window.start + window.length], dtype=np.float32)
        if crop.shape[1] != window.length:
            raise ProbeError(
                f"{paths[window.source]}: holds {array.shape[1]} samples, fewer than the "
                f"manifest says (window ends at {window.start + window.length})"
            )
        problem = crop_value_problem(
            crop, window.start, max_abs_value,
            hint="segments are expected z-scored; --max-abs-value 0 disables this check",
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

    Returns ``(earlier, later, number of overlapping pairs found)`` or None. Spans are the
    pooled ranges (context excluded). One sweep per source in start order, keeping for each
    split the window that reaches furthest: any overlap with a split shows up against it.
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
    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError) as err:
        raise ProbeError(f"{path}: cannot read segment ({err})") from None


# --------------------------------------------------------------------------------------------
# LibriBrain through pnpl
# --------------------------------------------------------------------------------------------

LIBRIBRAIN_TASKS = ("speech", "phoneme")
PNPL_PARTITIONS = {"train": "train", "valid": "validation", "test": "test"}


def load_libribrain(
    task: str,
    data_path: str,
    channel_stats: Optional[str] = None,
    tmin: float = 0.0,
    tmax: float = 0.5,
    max_windows: Optional[int] = None,
    seed: int = 0,
    **pnpl_kwargs,
) -> LabelledDataset:
    """LibriBrain speech detection or phoneme classification, with pnpl's partitions.

    Windows come from pnpl's ``LibriBrainSpeech`` / ``LibriBrainPhoneme`` (``download=False``:
    the data must already be under ``data_path``), one per pnpl item, for the partitions
    ``train``, ``validation`` and ``test``. Inputs are standardised and clipped with the
    pre-training channel statistics (``channel_stats.npz`` beside the LibriBrain manifests, see
    :func:`~meg2vec_fairseq.preprocessing.libribrain.load_channel_stats`) so that they match the
    segments the model was trained on; without them, pnpl's own statistics are used. Speech
    labels (pnpl gives one per sample) become one per window: speech if at least half of the
    window's samples are speech.

    Parameters
    ----------
    task : str
        ``"speech"`` or ``"phoneme"``.
    data_path : str
        pnpl's ``data_path`` (the LibriBrain tree).
    channel_stats : str or None
        Manifest directory or ``channel_stats.npz`` file.
    tmin, tmax : float
        Window relative to pnpl's reference (phoneme onset / sliding position), seconds.
    max_windows : int or None
        Keep at most this many windows per partition (random, seeded), to bound run time.
    seed : int
        Seed of that subsampling.
    **pnpl_kwargs
        Passed to the pnpl class (e.g. ``include_run_keys``, ``stride``).
    """
    from .preprocessing import libribrain as lb

    if task not in LIBRIBRAIN_TASKS:
        raise ProbeError(f"LibriBrain task must be one of {LIBRIBRAIN_TASKS}, got {task!r}")
    compat = lb.import_pnpl("pnpl.datasets.libribrain2025.compat")
    cls = compat.LibriBrainSpeech if task == "speech" else compat.LibriBrainPhoneme
    kwargs = dict(tmin=tmin, tmax=tmax, download=False, preload_files=False, standardize=True)
    stats_info = "pnpl"
    if channel_stats:
        stats = lb.load_channel_stats(channel_stats)
        kwargs.update(
            channel_means=np.asarray(stats.means, np.float64),
            channel_stds=np.asarray(stats.stds, np.float64),
            standardize=stats.standardize,
            clipping_boundary=stats.clip,
        )
        stats_info = os.path.abspath(channel_stats)
    kwargs.update(pnpl_kwargs)
    datasets = []
    missing: Dict[str, int] = {}  # runs of each partition that are not on disk (pnpl skips them)
    windows: List[Window] = []
    rng = np.random.default_rng(seed)
    sample_rate = 250.0
    class_names: Optional[List[str]] = None
    for split, partition in PNPL_PARTITIONS.items():
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                dataset = cls(data_path=data_path, partition=partition, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ProbeError(
                f"LibriBrain {task} ({partition}) under {data_path}: {err}".replace("\n", " ")
            ) from None
        missing[partition] = sum("File not found for run key" in str(w.message) for w in caught)
        sample_rate = float(getattr(dataset, "sfreq", sample_rate) or sample_rate)
        if class_names is None:
            names = getattr(dataset, "labels_sorted", None)
            class_names = list(names) if names is not None else ["silence", "speech"]
        datasets.append(dataset)
        items = np.arange(len(dataset))
        if max_windows is not None and len(items) > max_windows:
            items = np.sort(rng.choice(items, size=max_windows, replace=False))
        length = int(dataset[int(items[0])][0].shape[-1]) if len(items) else 0
        task_obj, samples = getattr(dataset, "task", None), getattr(dataset, "samples", None)
        for item in items:
            if task_obj is not None and samples is not None:  # labels without reading the MEG
                label = task_obj.get_label(samples[int(item)])
            else:
                label = dataset[int(item)][1]
            windows.append(Window(len(datasets) - 1, 0, length, (0, length),
                                  _window_label(label), split, int(item)))

    def read(window: Window) -> np.ndarray:
        data = datasets[window.source][window.item][0]
        return np.asarray(data, dtype=np.float32)

    return LabelledDataset(
        name=f"libribrain-{task}",
        windows=windows,
        class_names=list(class_names or []),
        read=read,
        sample_rate=sample_rate,
        n_channels=int(lb.N_CHANNELS),
        info={"data_path": os.path.abspath(data_path), "channel_stats": stats_info,
              "tmin": tmin, "tmax": tmax, "runs_not_on_disk": missing},
    )


def _window_label(label) -> int:
    array = np.asarray(label.numpy() if hasattr(label, "numpy") else label)
    if array.ndim == 0:
        return int(array)
    return int(array.astype(np.float64).mean() >= 0.5)  # per-sample speech mask


# --------------------------------------------------------------------------------------------
# Feature sources
# --------------------------------------------------------------------------------------------


class RawSource:
    """The preprocessed sensors themselves: one "frame" per sample, ``D`` = channels."""

    kind = "raw"

    def __init__(self) -> None:
        self.name = "raw"
        self.min_samples = 1

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(B, T, C)`` frames and the sample centre of each of the ``T`` frames."""
        return np.transpose(windows, (0, 2, 1)), np.arange(windows.shape[-1], dtype=np.float64)

    def describe(self) -> Dict[str, object]:
        return {"kind": self.kind, "name": self.name}


class ModelSource:
    """Features of a ``meg2vec`` model (checkpoint or fresh weights) at one layer.

    ``normalize`` z-scores each channel of each window over time before the model, as the
    pre-training task did when its ``normalize`` was set (read from the checkpoint/config).
    """

    kind = "model"

    def __init__(
        self,
        model,
        layer: Optional[Union[int, str]] = None,
        normalize: bool = False,
        name: str = "model",
        kind: str = "checkpoint",
        origin: str = "",
        batch_size: int = 32,
    ) -> None:
        if layer is not None and layer != CNN_LAYER:
            if not isinstance(layer, int) or not 0 <= layer < n_layers(model):
                raise ProbeError(
                    f"layer {layer!r} out of range: the model has {n_layers(model)} Transformer "
                    f"layers (0..{n_layers(model) - 1}), or use {CNN_LAYER!r}"
                )
        self.model = model.eval()
        self.layer = layer
        self.normalize = normalize
        self.name = name
        self.kind = kind
        self.origin = origin
        self.batch_size = batch_size
        self.receptive_field, self.stride = conv_frame_geometry(model.cfg.conv_feature_layers)
        self.min_samples = self.receptive_field

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if self.normalize:
            mean = x.mean(dim=-1, keepdim=True)
            std = x.std(dim=-1, keepdim=True)
            x = (x - mean) / std.clamp_min(1e-8)
        outputs = []
        for i in range(0, len(x), self.batch_size):
            outputs.append(extract_features(self.model, x[i : i + self.batch_size], self.layer))
        features = torch.cat(outputs).cpu().numpy()
        centres = np.arange(features.shape[1]) * self.stride + (self.receptive_field - 1) / 2.0
        return features, centres

    def describe(self) -> Dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "origin": self.origin,
            "layer": "last" if self.layer is None else self.layer,
            "normalize": self.normalize,
        }


def checkpoint_source(path: str, layer=None, batch_size: int = 32) -> ModelSource:
    """A :class:`ModelSource` of a trained checkpoint (raises :class:`ProbeError`)."""
    try:
        model, task_cfg = load_meg2vec(path)
    except CheckpointError as err:
        raise ProbeError(str(err).splitlines()[0]) from None
    return ModelSource(
        model, layer, bool(getattr(task_cfg, "normalize", False)), name="checkpoint",
        kind="checkpoint", origin=os.path.abspath(path), batch_size=batch_size,
    )


def resolve_config_path(config: str) -> str:
    """A yaml path, or the name of a shipped config (``meg2vec_tiny``) in config/pretraining."""
    if os.path.isfile(config):
        return config
    shipped = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "pretraining",
        config if config.endswith(".yaml") else f"{config}.yaml",
    )
    if os.path.isfile(shipped):
        return shipped
    raise ProbeError(f"--random-init {config!r}: no such yaml or checkpoint, nor shipped config")


def build_random_model(config: str, seed: int, in_channels: Optional[int] = None):
    """``(model, normalize)``: the architecture of ``config`` with fresh weights from ``seed``.

    ``config`` is a pre-training yaml (path or shipped name, e.g. ``meg2vec_tiny``: its
    ``model`` section and ``task.in_channels`` / ``task.normalize``), or a checkpoint (``.pt``:
    its saved configuration; its weights are ignored). Weights are initialised exactly as
    ``fairseq-hydra-train`` initialises them before the first update.
    """
    from omegaconf import OmegaConf

    from .models.meg2vec import Meg2VecConfig, Meg2VecModel

    if config.endswith(".pt"):
        if not os.path.isfile(config):
            raise ProbeError(f"--random-init {config}: checkpoint does not exist")
        try:
            state = torch.load(config, map_location="cpu", weights_only=False)
            cfg = state["cfg"]
            model_cfg, task_cfg = cfg["model"], cfg["task"]
        except Exception as err:  # noqa: BLE001 - any unreadable/foreign file
            raise ProbeError(f"--random-init {config}: not a fairseq checkpoint ({err})") from None
        if model_cfg.get("_name") != "meg2vec":
            raise ProbeError(
                f"--random-init {config}: holds a {model_cfg.get('_name')!r} model, not meg2vec"
            )
    else:
        path = resolve_config_path(config)
        raw = OmegaConf.load(path)
        if "model" not in raw or raw.model.get("_name") != "meg2vec":
            raise ProbeError(f"--random-init {path}: no 'model: _name: meg2vec' section")
        task_cfg = raw.get("task", {}) or {}
        model_cfg = raw.model
    fields = OmegaConf.to_container(OmegaConf.create(model_cfg), resolve=False)
    fields.pop("_name", None)
    channels = in_channels or int(task_cfg.get("in_channels", 306) or 306)
    fields["in_channels"] = channels
    structured = OmegaConf.structured(Meg2VecConfig)
    known = {k: v for k, v in fields.items() if k in structured}
    merged = OmegaConf.merge(structured, OmegaConf.create(known))
    merged.in_channels = channels
    torch.manual_seed(seed)
    model = Meg2VecModel(merged)
    return model.eval(), bool(task_cfg.get("normalize", False))


# --------------------------------------------------------------------------------------------
# Pooling and feature matrices
# --------------------------------------------------------------------------------------------


def pool_frames(
    frames: np.ndarray, centres: np.ndarray, pool: Tuple[int, int], pooling: str = "meanstd"
) -> np.ndarray:
    """Pool the frames of one window whose centre lies in samples ``[a, b)``.

    If no frame centre falls in the range, the frame nearest to its middle is used.
    ``pooling``: ``"mean"`` (``D`` values) or ``"meanstd"`` (``2 D``: mean then std).
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
    """``(N, D')`` pooled features of the windows of ``split`` (in dataset order)."""
    windows = dataset.split_windows(split)
    out: List[Optional[np.ndarray]] = [None] * len(windows)
    by_length: Dict[int, List[int]] = {}
    for i, window in enumerate(windows):
        if window.length < source.min_samples:
            raise ProbeError(
                f"{dataset.name}: a {split} window has {window.length} samples, fewer than the "
                f"{source.min_samples} the {source.name} features need (use --context or "
                "longer spans)"
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


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------


def check_labels(features: np.ndarray, labels: np.ndarray, split: str) -> None:
    """Raise :class:`ProbeError` unless there is one label per feature row."""
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
    """Raise :class:`ProbeError` for a fraction outside (0, 1], a non-positive or non-finite
    ``C``, an empty grid, or a negative seed (NumPy's generators refuse them)."""
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
    """Indices of a random ``fraction`` of each class (at least one per class), sorted."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n = max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(keep))


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

    Returns
    -------
    dict
        ``C``, ``valid_macro_f1`` (of the chosen C), test ``macro_f1``,
        ``balanced_accuracy`` and ``confusion`` (list of lists), ``n_train``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

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
    x_train, y_train = features["train"][subset], labels["train"][subset]
    scaler = StandardScaler().fit(x_train)
    transformed = {s: scaler.transform(features[s]) for s in ("valid", "test")}
    x_train = scaler.transform(x_train)
    best = None
    for c in c_grid:
        classifier = LogisticRegression(
            C=c, class_weight="balanced", max_iter=max_iter, random_state=seed
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(x_train, y_train)
        valid_pred = classifier.predict(transformed["valid"])
        score = macro_f1(confusion_matrix(labels["valid"], valid_pred, n_classes))
        if best is None or score > best[0]:
            best = (score, c, classifier)
    valid_score, c, classifier = best
    matrix = confusion_matrix(labels["test"], classifier.predict(transformed["test"]), n_classes)
    return {
        "seed": seed,
        "C": float(c),
        "valid_macro_f1": float(valid_score),
        "macro_f1": macro_f1(matrix),
        "balanced_accuracy": balanced_accuracy(matrix),
        "confusion": matrix.tolist(),
        "n_train": int(len(subset)),
    }


@dataclass
class SourceSpec:
    """How to build a feature source for a seed: ``build(seed) -> source``; ``seeded`` says
    whether the source itself changes with the seed (fresh random weights)."""

    name: str
    build: Callable[[int], object]
    seeded: bool = False


def run_probe(
    dataset: LabelledDataset,
    sources: Sequence[SourceSpec],
    seeds: Sequence[int] = (0, 1, 2),
    pooling: str = "meanstd",
    train_fraction: float = 0.8,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, object]:
    """Probe every source on ``dataset`` for every seed; the JSON-able result.

    The same windows, pooling, standardisation, classifier and seeds for every source.
    """
    if pooling not in POOLINGS:
        raise ProbeError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if not seeds:
        raise ProbeError("give at least one seed")
    check_probe_options(train_fraction, c_grid, seeds)
    dataset.check()
    n_classes = len(dataset.class_names)
    labels = {split: dataset.labels(split) for split in SPLITS}
    results = []
    for spec in sources:
        per_seed = []
        cached: Optional[Dict[str, np.ndarray]] = None
        description: Dict[str, object] = {}
        for seed in seeds:
            if cached is None or spec.seeded:
                source = spec.build(seed)
                description = source.describe()
                cached = {s: feature_matrix(dataset, source, s, pooling) for s in SPLITS}
            run = fit_and_score(cached, labels, n_classes, seed, train_fraction, c_grid)
            per_seed.append(run)
            if log:
                log(f"{spec.name} seed {seed}: C={run['C']:g} valid macro-F1 "
                    f"{run['valid_macro_f1']:.3f}, test macro-F1 {run['macro_f1']:.3f}, "
                    f"balanced accuracy {run['balanced_accuracy']:.3f}")
        results.append({
            "name": spec.name,
            "source": description,
            "feature_dim": int(cached["train"].shape[1]),
            "per_seed": per_seed,
            "macro_f1": summarise([r["macro_f1"] for r in per_seed]),
            "balanced_accuracy": summarise([r["balanced_accuracy"] for r in per_seed]),
        })
    counts = {s: np.bincount(labels[s], minlength=n_classes).tolist() for s in SPLITS}
    return {
        "dataset": {"name": dataset.name, "classes": dataset.class_names,
                    "counts": counts, "sample_rate": dataset.sample_rate, **dataset.info},
        "probe": {"pooling": pooling, "seeds": list(seeds), "train_fraction": train_fraction,
                  "C_grid": list(c_grid), "classifier": "LogisticRegression(class_weight="
                  "'balanced'), StandardScaler on the training subset; C by valid macro-F1"},
        "chance": chance_levels(labels["test"], n_classes),
        "sources": results,
    }


def format_table(result: Dict[str, object]) -> str:
    """One table: a row per source (mean ± std over seeds) and the chance row."""
    seeds = len(result["probe"]["seeds"])
    lines = [
        f"{'source':<28} {'macro-F1':>17} {'balanced acc.':>17}   (test, {seeds} seed(s), "
        "mean ± std)",
    ]
    for row in result["sources"]:
        f1, ba = row["macro_f1"], row["balanced_accuracy"]
        lines.append(
            f"{row['name']:<28} {f1['mean']:>9.3f} ± {f1['std']:.3f} "
            f"{ba['mean']:>9.3f} ± {ba['std']:.3f}"
        )
    chance = result["chance"]
    lines.append(f"{'chance':<28} {chance['macro_f1']:>9.3f}         "
                 f"{chance['balanced_accuracy']:>9.3f}")
    return "\n".join(lines)


def write_json(result: Dict[str, object], path: str) -> None:
    """Write ``result`` to ``path`` atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def plot_formats() -> List[str]:
    """File extensions ``plot_result`` can write (matplotlib's savefig formats)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def plot_result(result: Dict[str, object], path: str) -> None:
    """Bar chart of test macro-F1 and balanced accuracy per source (mean, std, seeds, chance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sources"]
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(rows), 3.6), squeeze=False)
    for ax, metric, title in zip(axes[0], ("macro_f1", "balanced_accuracy"),
                                 ("macro-F1", "balanced accuracy")):
        means = [r[metric]["mean"] for r in rows]
        stds = [r[metric]["std"] for r in rows]
        x = np.arange(len(rows))
        ax.bar(x, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.7)
        for i, r in enumerate(rows):
            ax.plot([i] * len(r["per_seed"]), [s[metric] for s in r["per_seed"]], "k.", ms=4)
        ax.axhline(result["chance"][metric], color="tab:red", ls="--", label="chance")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"test {title}")
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(result["dataset"]["name"], fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def iter_rows(result: Dict[str, object]) -> Iterator[Tuple[str, float, float, float, float]]:
    """``(name, f1 mean, f1 std, balanced-accuracy mean, std)`` per source."""
    for row in result["sources"]:
        yield (row["name"], row["macro_f1"]["mean"], row["macro_f1"]["std"],
               row["balanced_accuracy"]["mean"], row["balanced_accuracy"]["std"])


__all__ = [
    "ProbeError", "confusion_matrix", "macro_f1", "balanced_accuracy", "chance_levels",
    "load_manifest_labels", "load_libribrain", "RawSource", "ModelSource", "checkpoint_source",
    "build_random_model", "pool_frames", "feature_matrix", "fit_and_score", "run_probe",
    "SourceSpec", "format_table", "write_json", "plot_result", "find_split_overlap",
    "check_probe_options", "plot_formats",
]
