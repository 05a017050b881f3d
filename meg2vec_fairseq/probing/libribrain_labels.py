"""LibriBrain speech and phoneme labels through pnpl, as a labelled dataset of windows."""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional

import numpy as np

from ..constants import SFREQ
from ..errors import ProbeError
from .windows import LabelledDataset, Window

#: The LibriBrain tasks: speech detection, phoneme classification.
LIBRIBRAIN_TASKS = ("speech", "phoneme")
#: pnpl partition of each split.
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

    Returns
    -------
    LabelledDataset
        One window per kept pnpl item; ``info`` records the statistics used and the runs of
        each partition that are not on disk.

    Raises
    ------
    ProbeError
        For an unknown task, or a partition pnpl cannot open (the message names the folder).

    Notes
    -----
    Windows come from pnpl's ``LibriBrainSpeech`` / ``LibriBrainPhoneme`` (``download=False``:
    the data must already be under ``data_path``), one per pnpl item, for the partitions
    ``train``, ``validation`` and ``test``. Inputs are standardised and clipped with the
    pre-training channel statistics (``channel_stats.npz`` beside the LibriBrain manifests, see
    :func:`~meg2vec_fairseq.preprocessing.libribrain.load_channel_stats`) so that they match the
    segments the model was trained on; without them, pnpl's own statistics are used. Speech
    labels (pnpl gives one per sample) become one per window: speech if at least half of the
    window's samples are speech.
    """
    from ..preprocessing import libribrain as lb

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
    sample_rate = SFREQ  # until pnpl says otherwise
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
    """One class per window: pnpl's class index, or speech if half the samples are speech."""
    array = np.asarray(label.numpy() if hasattr(label, "numpy") else label)
    if array.ndim == 0:
        return int(array)
    return int(array.astype(np.float64).mean() >= 0.5)  # per-sample speech mask
