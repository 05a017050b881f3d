"""Probe feature sources on a labelled dataset: the loop over sources and seeds, and its driver."""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..constants import MAX_ABS_VALUE, SFREQ
from ..errors import ProbeError
from ..features import Layer
from .classifier import DEFAULT_C_GRID, check_probe_options, fit_and_score
from .libribrain_labels import load_libribrain
from .metrics import chance_levels, summarise
from .pooling import POOLINGS, feature_matrix
from .report import plot_result, write_json
from .sources import RawSource, SourceSpec, checkpoint_source, random_init_spec
from .windows import SPLITS, LabelledDataset, load_manifest_labels


def run_probe(
    dataset: LabelledDataset,
    sources: Sequence[SourceSpec],
    seeds: Sequence[int] = (0, 1, 2),
    pooling: str = "meanstd",
    train_fraction: float = 0.8,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, object]:
    """Probe every source on ``dataset`` for every seed.

    Parameters
    ----------
    dataset : LabelledDataset
        Labelled windows with train, valid and test splits.
    sources : sequence of SourceSpec
        The feature sources; an unseeded source is built once and its features reused.
    seeds : sequence of int
        One probe run per seed (training subset and solver).
    pooling : str
        ``"mean"`` or ``"meanstd"`` (:func:`~meg2vec_fairseq.probing.pooling.pool_frames`).
    train_fraction : float
        Stratified fraction of the training windows used per seed, in (0, 1].
    c_grid : sequence of float
        Inverse regularisation strengths tried on the validation split.
    log : callable or None
        Called with one line per source and seed.

    Returns
    -------
    dict
        JSON-able: ``dataset`` (classes, counts per split, provenance), ``probe`` (settings),
        ``chance`` and ``sources`` (per source: description, ``feature_dim``, ``per_seed``
        runs and ``macro_f1`` / ``balanced_accuracy`` summaries).

    Raises
    ------
    ProbeError
        For impossible options, or a dataset that cannot be probed
        (:meth:`LabelledDataset.check`).

    Notes
    -----
    Every source goes through the same windows, pooling, standardisation, classifier and
    seeds: per seed, a stratified random subset of the training windows, features standardised
    on it, a class-weighted logistic regression for each ``C``; the ``C`` with the best
    validation macro-F1 is scored once on the test split.
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


def probe(
    *,
    manifest: Union[str, Sequence[str], None] = None,
    labels: Optional[str] = None,
    libribrain: Optional[str] = None,
    data_path: Optional[str] = None,
    channel_stats: Optional[str] = None,
    tmin: float = 0.0,
    tmax: float = 0.5,
    max_windows: Optional[int] = None,
    sample_rate: float = SFREQ,
    context: float = 0.0,
    allow_overlap: bool = False,
    max_abs_value: Optional[float] = MAX_ABS_VALUE,
    checkpoint: Optional[str] = None,
    random_init: Optional[str] = None,
    raw: bool = False,
    layer: Layer = None,
    seeds: Sequence[int] = (0, 1, 2),
    pooling: str = "meanstd",
    train_fraction: float = 0.8,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    json_path: Optional[str] = None,
    plot_path: Optional[str] = None,
    log: Optional[Callable[[str], None]] = None,
    warn: Optional[Callable[[str], None]] = None,
) -> Dict[str, object]:
    """Probe a checkpoint, fresh weights and/or the raw sensors on labelled MEG, from files.

    Parameters
    ----------
    manifest, labels : str
        The generic dataset: fairseq TSV manifest(s) of ``.npy`` segments and a labels TSV
        (:func:`~meg2vec_fairseq.probing.windows.load_manifest_labels`).
    libribrain, data_path : str
        Or a LibriBrain task (``"speech"``, ``"phoneme"``) and pnpl's data folder
        (:func:`~meg2vec_fairseq.probing.libribrain_labels.load_libribrain`).
    channel_stats : str or None
        LibriBrain: the pre-training channel statistics.
    tmin, tmax : float
        LibriBrain: the window around pnpl's reference (s).
    max_windows : int or None
        LibriBrain: at most this many windows per partition (random).
    sample_rate : float
        Sampling rate of the manifest's segments (Hz).
    context : float
        Seconds of signal each side of a labelled span that the sources see.
    allow_overlap : bool
        Warn instead of failing when windows of one segment overlap across splits.
    max_abs_value : float or None
        Refuse a window with ``|x|`` above this (None or 0: no check).
    checkpoint : str or None
        A ``meg2vec`` checkpoint: source ``"checkpoint"`` (loaded once).
    random_init : str or None
        A pre-training config (path or shipped name) or checkpoint whose architecture gets
        fresh weights for every seed: source ``"random-init"``.
    raw : bool
        Source ``"raw"``: the preprocessed sensors.
    layer : int, "cnn", None or tuple of these
        Layer of the model sources (None: the last Transformer layer).
    seeds, pooling, train_fraction, c_grid
        See :func:`run_probe`.
    json_path, plot_path : str or None
        Where to write the result (:func:`~meg2vec_fairseq.probing.report.write_json`) and
        its figure (:func:`~meg2vec_fairseq.probing.report.plot_result`).
    log : callable or None
        Called with one progress line per source and seed.
    warn : callable or None
        Called with the message of each warning raised while the labels are read (such as
        overlapping windows allowed by ``allow_overlap``); None: they are left to
        :mod:`warnings`.

    Returns
    -------
    dict
        The result of :func:`run_probe`.

    Raises
    ------
    ProbeError
        For bad data or options; the message names the file and row, or the parameter
        (errors of ``random_init``'s config start with ``"random_init "``).
    CheckpointError, OSError
        For a checkpoint or an output that cannot be used.

    Notes
    -----
    Sources are built before any feature is computed, so a bad checkpoint, config or layer
    fails early; sources run in the order checkpoint, random-init, raw.
    """
    from .sources import meg2vec_config

    if not (checkpoint or random_init or raw):
        raise ProbeError("give at least one feature source: checkpoint, random_init or raw")
    if bool(libribrain) == bool(manifest or labels):
        raise ProbeError("give either manifest and labels, or libribrain and data_path")
    if libribrain:
        if not data_path:
            raise ProbeError("libribrain needs data_path")
        dataset = load_libribrain(libribrain, data_path, channel_stats, tmin, tmax, max_windows)
    else:
        if not (manifest and labels):
            raise ProbeError("manifest and labels go together")
        dataset = _manifest_dataset(manifest, labels, sample_rate, context, allow_overlap,
                                    max_abs_value, warn)
    sources: List[SourceSpec] = []
    if checkpoint:
        trained = checkpoint_source(checkpoint, layer)
        sources.append(SourceSpec("checkpoint", lambda seed: trained))
    if random_init:
        try:
            meg2vec_config(random_init, dataset.n_channels)
        except ProbeError as err:
            raise ProbeError(f"random_init {err}") from None
        spec = random_init_spec(random_init, layer, dataset.n_channels)
        spec.build(0)  # checks the layer before any feature is computed
        sources.append(spec)
    if raw:
        sources.append(SourceSpec("raw", lambda seed: RawSource()))
    result = run_probe(dataset, sources, seeds, pooling, train_fraction, c_grid, log=log)
    if json_path:
        write_json(result, json_path)
    if plot_path:
        plot_result(result, plot_path)
    return result


def _manifest_dataset(
    manifest: Union[str, Sequence[str]], labels: str, sample_rate: float, context: float,
    allow_overlap: bool, max_abs_value: Optional[float],
    warn: Optional[Callable[[str], None]],
) -> LabelledDataset:
    """:func:`load_manifest_labels`, its warnings passed to ``warn`` when given."""
    if warn is None:
        return load_manifest_labels(manifest, labels, sample_rate, context,
                                    allow_overlap=allow_overlap, max_abs_value=max_abs_value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        dataset = load_manifest_labels(manifest, labels, sample_rate, context,
                                       allow_overlap=allow_overlap, max_abs_value=max_abs_value)
    for warning in caught:
        warn(str(warning.message))
    return dataset
