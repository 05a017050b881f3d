"""Inputs -> segments and manifests: the driver of each ``make_manifest`` subcommand."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from .discovery import discover_bids, discover_recordings
from .libribrain import RunSelection, select_runs
from .libribrain_pipeline import make_libribrain_manifests
from .ownership import OutputLock, invalidate_outputs, lock_outputs
from .params import LibriBrainConfig, PreprocessParams
from .pipeline import run_recordings
from .recordings import make_tasks, process_recording
from .report import finalize_outputs, summarize
from .results import RecordingResult


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """Where a run writes and how it splits and runs (every input type).

    Attributes
    ----------
    dest : Path
        Manifest folder (``train.tsv``, ``valid.tsv``, ``report.json``, ``qc.png``).
    segments_dir : Path or None
        Segments folder (default ``dest/segments``).
    valid_percent : float
        Fraction of recordings for ``valid.tsv``, in ``[0, 1)``.
    seed : int
        Seed of the train/valid split.
    jobs : int
        Recordings processed in parallel.
    overwrite : bool
        Reprocess recordings an earlier run finished.
    progress : bool
        Show progress bars.
    qc : bool
        Draw ``qc.png``.
    """

    dest: Path
    segments_dir: Optional[Path] = None
    valid_percent: float = 0.1
    seed: int = 0
    jobs: int = 1
    overwrite: bool = False
    progress: bool = True
    qc: bool = True

    @property
    def segments_root(self) -> Path:
        """The segments folder, absolute."""
        return Path(self.segments_dir or Path(self.dest) / "segments").resolve()

    def validate(self) -> None:
        """Raise ValueError, naming the value, for options that can never work."""
        if not 0 <= self.valid_percent < 1:
            raise ValueError(f"valid_percent={self.valid_percent} must be in [0, 1)")
        if self.jobs < 1:
            raise ValueError(f"jobs={self.jobs} must be >= 1")


@dataclasses.dataclass
class ManifestRun:
    """What one ``make_manifest`` run did.

    Attributes
    ----------
    results : list of RecordingResult
        One per recording (or run), failures included.
    outputs : dict
        What :func:`~.report.finalize_outputs` returned (splits, manifest paths, report, QC).
    summary : dict
        :func:`~.report.summarize` of ``results``.
    not_used : list of dict
        Files the input search saw but did not use, with reasons.
    elapsed_s : float
        Wall time of the processing.
    extra : dict
        Input-type specific outcome (LibriBrain: ``selection``, ``stats``).
    """

    results: list[RecordingResult]
    outputs: dict[str, Any]
    summary: dict[str, Any]
    not_used: list[dict[str, str]] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Number of recordings that failed."""
        return self.summary["failed"]


def claim_outputs(dest: str | os.PathLike, segments_root: str | os.PathLike,
                  command: Optional[str] = None) -> OutputLock:
    """Lock ``dest`` and the segments folder, then drop an earlier run's manifests.

    Call it after the options are checked and before any segment is touched: a manifest
    must never list segments that this run is about to delete or rewrite.

    Raises
    ------
    OutputLockedError
        Another run holds one of the folders.
    OutputPathError
        A folder cannot be created.
    """
    lock = lock_outputs(dest, segments_root, command=command)
    invalidate_outputs(dest)
    return lock


def _mne_manifests(found: Sequence[tuple[Path, Path]], problems: list[RecordingResult],
                   not_used: list[dict[str, str]], params: PreprocessParams,
                   out: OutputOptions, inputs: Sequence[Any], input_name: str,
                   command: Optional[str]) -> ManifestRun:
    """Shared body of ``raw`` and ``bids``: lock, process, finalize."""
    root = out.segments_root
    with claim_outputs(out.dest, root, command):
        root.mkdir(parents=True, exist_ok=True)
        tasks = make_tasks(found, params, root, overwrite=out.overwrite)
        t0 = time.perf_counter()
        results = run_recordings(process_recording, tasks, jobs=out.jobs,
                                 progress=out.progress)
        results += problems
        run_params = {"command": input_name, **params.fingerprint_dict(),
                      "valid_percent": out.valid_percent, "seed": out.seed,
                      "segments_root": str(root), "inputs": [str(i) for i in inputs]}
        outputs = finalize_outputs(out.dest, root, results, run_params, out.valid_percent,
                                   out.seed, qc=out.qc, not_used=not_used)
        elapsed = time.perf_counter() - t0
    return ManifestRun(results, outputs, summarize(results), not_used, elapsed)


def make_raw_manifests(roots: Sequence[str | os.PathLike], params: PreprocessParams,
                       out: OutputOptions, patterns: Optional[Sequence[str]] = None,
                       command: Optional[str] = None) -> ManifestRun:
    """Recordings MNE reads under ``roots`` -> segments, manifests, report and QC.

    Parameters
    ----------
    roots : sequence of path-like
        Folders searched recursively, or single recordings.
    params : PreprocessParams
        Checked (:meth:`~.params.PreprocessParams.validate`) by the caller.
    out : OutputOptions
        Checked (:meth:`OutputOptions.validate`) by the caller.
    patterns : sequence of str, optional
        Name globs (default :data:`~.discovery.DEFAULT_PATTERNS`).
    command : str, optional
        The command line, shown to a run that finds the folders locked.

    Returns
    -------
    run : ManifestRun

    Raises
    ------
    OutputLockedError, OutputPathError
        See :func:`claim_outputs`; nothing is processed.
    """
    not_used: list[dict[str, str]] = []
    found, problems = discover_recordings(roots, patterns, not_used)
    return _mne_manifests(found, problems, not_used, params, out, list(roots), "raw", command)


def make_bids_manifests(bids_root: str | os.PathLike, params: PreprocessParams,
                        out: OutputOptions, entities: Optional[Mapping[str, Sequence[str]]]
                        = None, command: Optional[str] = None) -> ManifestRun:
    """The MEG recordings of a BIDS dataset -> segments, manifests, report and QC.

    As :func:`make_raw_manifests`; ``entities`` keeps only the given ``subjects``,
    ``sessions``, ``tasks`` and ``runs`` (labels without their prefix).
    """
    not_used: list[dict[str, str]] = []
    found, problems = discover_bids(bids_root, not_used=not_used, **dict(entities or {}))
    return _mne_manifests(found, problems, not_used, params, out, [bids_root], "bids",
                          command)


def check_libribrain(cfg: LibriBrainConfig) -> RunSelection:
    """Check LibriBrain options and resolve the runs, before any work.

    Raises
    ------
    LibriBrainError
        Bad options, unknown partitions, a run in both train and valid, ...
    """
    cfg.check()
    return select_runs(cfg.dataset, cfg.train_partition, cfg.valid_partition,
                       cfg.train_run_keys, cfg.valid_run_keys, cfg.exclude_run_keys)


def make_libribrain_run(cfg: LibriBrainConfig, selection: RunSelection,
                        command: Optional[str] = None) -> ManifestRun:
    """LibriBrain runs -> segments, channel statistics, manifests, report and QC.

    Locks the outputs (:func:`claim_outputs`) around
    :func:`~.libribrain_pipeline.make_libribrain_manifests`.

    Raises
    ------
    OutputLockedError, OutputPathError
        See :func:`claim_outputs`.
    LibriBrainError
        No training run usable (nothing sensible to write).
    """
    dest = Path(cfg.dest)
    with claim_outputs(dest, Path(cfg.segments_root) if cfg.segments_root
                       else dest / "segments", command):
        t0 = time.perf_counter()
        out = make_libribrain_manifests(cfg, selection)
        elapsed = time.perf_counter() - t0
    return ManifestRun(out["results"], out["outputs"], summarize(out["results"]), [],
                       elapsed, {"selection": out["selection"], "stats": out["stats"]})
