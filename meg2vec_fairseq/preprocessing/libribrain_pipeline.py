"""LibriBrain runs -> standardised, clipped segments, channel statistics and manifests."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import LibriBrainError
from ..io.atomic import atomic_write_text
from .libribrain import (
    N_CHANNELS,
    STATS_FILENAME,
    ChannelStats,
    RunInfo,
    RunSelection,
    channel_names,
    check_run,
    format_run_key,
    h5_path,
    implausible_samples,
    iter_run_chunks,
    locate_runs,
    make_resolver,
    pnpl_default_preprocessing_str,
    run_key_name,
    run_statistics,
    save_channel_stats,
    select_runs,
)
from .ownership import remove_recording_dir
from .params import PNPL_DEFAULT, LibriBrainConfig, RunKey
from .pipeline import process_resumable, run_recordings
from .report import finalize_outputs, qc_spectrum
from .results import RecordingResult, RecordingTask, params_fingerprint
from .segmenter import Segment, Segmenter, true_runs, write_segments
from .splits import fixed_splits
from .stats import CONSTANT_STD, QUIET_INPUT, RunningStats

_STATS_CACHE = "_stats"  # per-run statistics cache under SEGMENTS_ROOT (resume without re-reading)


@dataclass(frozen=True)
class RunSource:
    """Where a worker reads one LibriBrain run (picklable: each process opens it itself).

    Attributes
    ----------
    data_path, dataset, preprocessing_str : str, str, str or None
        As for :func:`~meg2vec_fairseq.preprocessing.libribrain.make_resolver`.
    run_key : run key
        ``(subject, session, task, run)``.
    segments_root : str
        Root of all segments (the statistics cache lives under it too).
    chunk_samples : int
        Time samples read at a time.
    fsync : bool
        fsync what is written.
    """

    data_path: str
    dataset: str
    preprocessing_str: Optional[str]
    run_key: RunKey
    segments_root: str
    chunk_samples: int
    fsync: bool = True


@dataclass(frozen=True)
class SegmentJob:
    """What :func:`_segment_worker` needs for one run, besides its :class:`RunSource`.

    Attributes
    ----------
    source : RunSource
    split : str
        ``"train"`` or ``"valid"`` (for the report).
    fingerprint : str
        Parameter fingerprint of the done markers.
    means, stds : tuple of float
        The transform's per-channel statistics.
    standardize : bool
    clip : float or None
    sfreq : float
    segment_samples : int
    dtype : str
    n_times : int
        Samples in the run.
    channel_names : tuple of str
    """

    source: RunSource
    split: str
    fingerprint: str
    means: Tuple[float, ...]
    stds: Tuple[float, ...]
    standardize: bool
    clip: Optional[float]
    sfreq: float
    segment_samples: int
    dtype: str
    n_times: int
    channel_names: Tuple[str, ...] = ()


def _stats_worker(task: RecordingTask) -> RecordingResult:
    """Worker: one training run's streamed statistics, cached under SEGMENTS_ROOT/_stats."""
    src: RunSource = task.options
    cache = os.path.join(src.segments_root, _STATS_CACHE, task.recording_id + ".json")
    ident = _source_identity(task.source)
    try:
        with open(cache, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("source") == ident:
            return RecordingResult(task.recording_id, task.source,
                                   extra={"stats": cached["stats"], "cached": True})
    except (OSError, ValueError, KeyError):
        pass  # no (valid) cache: compute
    resolver = make_resolver(src.data_path, src.dataset, src.preprocessing_str, False)
    stats = run_statistics(resolver, src.run_key, src.chunk_samples)
    if stats.n == 0:
        raise LibriBrainError(f"run {format_run_key(src.run_key)} ({task.source}): no samples")
    payload = {"source": ident, "stats": stats.to_dict()}
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    atomic_write_text(cache, json.dumps(payload) + "\n", fsync=src.fsync)
    return RecordingResult(task.recording_id, task.source, extra={"stats": payload["stats"]})


def _source_identity(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _segment_worker(task: RecordingTask) -> RecordingResult:
    """Worker: stream one run, standardise + clip, cut and write its segments (resumable)."""
    job: SegmentJob = task.options
    return process_resumable(job.source.segments_root, task.recording_id, job.fingerprint,
                             lambda _, rec_dir: _write_run(task, job))


def _write_run(task: RecordingTask, job: SegmentJob) -> RecordingResult:
    """The segments of one run (into its prepared folder) and its result record."""
    src = job.source
    key = src.run_key
    transform = ChannelStats(means=np.asarray(job.means), stds=np.asarray(job.stds),
                             standardize=job.standardize, clip=job.clip)
    resolver = make_resolver(src.data_path, src.dataset, src.preprocessing_str, False)
    sfreq = job.sfreq
    counters = {"clipped": 0, "values": 0, "implausible": 0}
    qc: Dict[str, dict] = {}
    # Spans are added while streaming, always before the chunk holding them is cut.
    segmenter = Segmenter(job.segment_samples, bad_spans={"implausible_amplitude": []})
    amp_spans: List[Tuple[int, int]] = []

    def chunks() -> Iterator[np.ndarray]:
        pos = 0
        for raw in iter_run_chunks(resolver, key, src.chunk_samples):
            implausible = implausible_samples(raw)
            if implausible.any():
                counters["implausible"] += int(implausible.sum())
                amp_spans.extend((pos + a, pos + b) for a, b in true_runs(implausible))
                segmenter.bad_spans["implausible_amplitude"] = np.asarray(
                    amp_spans, dtype=np.int64).reshape(-1, 2)
                raw = raw.copy()
                raw[:, implausible] = transform.means[:, None]  # z = 0, never written
            pos += raw.shape[1]
            if not qc:  # spectra of the first chunk (<= chunk seconds) for qc.png
                qc["before"] = qc_spectrum(raw, sfreq)
            if transform.clip is None:
                out = transform.apply(raw)
            else:
                out = _apply_counting(transform, raw, counters)
            if "after" not in qc:
                qc["after"] = qc_spectrum(out, sfreq)
            yield out

    checked = _check_not_constant(segmenter.segments(chunks()), transform, task.source,
                                  format_run_key(key))
    rows = write_segments(checked, src.segments_root, task.recording_id,
                          dtype=job.dtype, fsync=src.fsync)
    return RecordingResult(
        task.recording_id, task.source, system="megin306 (pnpl LibriBrain h5)",
        n_channels=N_CHANNELS, n_meg_channels=N_CHANNELS, channel_policy="exact",
        channel_names=list(job.channel_names),
        sfreq_in=sfreq, sfreq_out=sfreq, seconds_in=round(job.n_times / sfreq, 3),
        seconds_kept=round(len(rows) * job.segment_samples / sfreq, 3),
        segments_written=len(rows), segments_dropped=dict(segmenter.dropped),
        tail_seconds=round(segmenter.tail_samples / sfreq, 3), segments=rows, qc=qc,
        extra={
            "run_key": list(key), "split": job.split, "dataset": src.dataset,
            "standardize": job.standardize, "clip": job.clip,
            "clipped_fraction": (counters["clipped"] / counters["values"]
                                 if counters["values"] else 0.0),
            "implausible_samples": counters["implausible"],
        },
    )


def _check_not_constant(segments: Iterator[Segment], transform: ChannelStats,
                        path: str, run: str) -> Iterator[Segment]:
    """Pass segments through; raise if a live input channel became constant in one.

    Standardise-then-clip can flatten a channel when the statistics are far off (e.g. a
    mean or std computed over corrupt samples) or the clip saturates; such a segment is
    never written. A channel that looks constant in the output (all values equal, or,
    when standardising, std below :data:`CONSTANT_STD`) is checked against the input
    over the same span (read again, only then): the run fails unless the input there is
    constant too, or, standardised, below :data:`QUIET_INPUT`.
    """
    import h5py

    for s in segments:
        out = s.data
        low = out.max(axis=1) == out.min(axis=1)
        if transform.standardize:
            low |= out.std(axis=1) < CONSTANT_STD
        low = np.flatnonzero(low)
        if len(low):
            with h5py.File(path, "r") as f:
                x = np.asarray(f["data"][:, s.start:s.start + out.shape[1]],
                               dtype=np.float64)[low]
            live = x.max(axis=1) > x.min(axis=1)
            if transform.standardize:
                live &= x.std(axis=1) / transform.stds[low] > QUIET_INPUT
            if live.any():
                raise LibriBrainError(
                    f"run {run} ({path}): channel(s) {low[live][:5].tolist()} would be "
                    f"constant in segment {s.index} although the input there is not (the "
                    "statistics do not fit this run, or corrupt samples?); refusing to "
                    "write such segments")
        yield s


def _apply_counting(transform: ChannelStats, raw: np.ndarray, counters: dict) -> np.ndarray:
    """``transform.apply`` that also counts the values the clip changes (for report.json)."""
    unclipped = ChannelStats(transform.means, transform.stds, transform.standardize, None)
    z = unclipped.apply(raw)
    counters["clipped"] += int(np.count_nonzero(np.abs(z) > transform.clip))
    counters["values"] += z.size
    return np.clip(z, -transform.clip, transform.clip, out=z)



def make_libribrain_manifests(cfg: LibriBrainConfig,
                              selection: Optional[RunSelection] = None) -> dict:
    """LibriBrain -> ``.npy`` segments, ``train.tsv``/``valid.tsv``, stats, report, QC.

    Steps: select runs (:func:`select_runs`); find (or, with ``download``, fetch) their files
    through pnpl; check each; stream per-channel statistics over the *training* runs only;
    stream every run through standardise-then-clip with those statistics and cut it into
    segments (parallel over runs, resumable through the shared done markers); write
    ``channel_stats.npz``, then ``qc.png``, ``report.json`` and the manifests last.

    A run that cannot be used (missing, unreadable, wrong shape, too short, failed download)
    is a ``failed`` entry in ``report.json`` naming its run key and file; the other runs are
    still processed.

    Parameters
    ----------
    cfg : LibriBrainConfig
    selection : RunSelection, optional
        Result of :func:`select_runs` for ``cfg`` if already computed.

    Returns
    -------
    dict
        ``{"results": [RecordingResult], "selection": RunSelection, "stats": ChannelStats,
        "outputs": finalize_outputs(...) dict, "failed": int}``.

    Raises
    ------
    LibriBrainError
        Bad options, or no training run usable (nothing sensible to write).
    """
    cfg.check()
    if selection is None:
        selection = select_runs(cfg.dataset, cfg.train_partition, cfg.valid_partition,
                                cfg.train_run_keys, cfg.valid_run_keys, cfg.exclude_run_keys)
    proc = pnpl_default_preprocessing_str() if cfg.preprocessing_str == PNPL_DEFAULT \
        else cfg.preprocessing_str
    dest = os.path.abspath(cfg.dest)
    root = os.path.abspath(cfg.segments_root or os.path.join(dest, "segments"))
    os.makedirs(root, exist_ok=True)
    split_of_key = {k: "train" for k in selection.train}
    split_of_key.update({k: "valid" for k in selection.valid})
    ids = {k: run_key_name(k) for k in split_of_key}
    if cfg.overwrite:  # forget earlier work on these runs (segments, markers, cached stats)
        for rid in ids.values():
            # Only what make_manifest wrote: a folder that is not provably its own is left
            # alone, and that run then fails naming it (prepare_recording_dir refuses it).
            remove_recording_dir(root, rid)
            _unlink(os.path.join(root, _STATS_CACHE, rid + ".json"))

    resolver = make_resolver(cfg.data_path, cfg.dataset, proc, cfg.download)
    located = locate_runs(resolver, list(split_of_key), progress=cfg.progress)
    failed: Dict[RunKey, RecordingResult] = {}

    def fail(key: RunKey, reason: str, source: Optional[str] = None) -> None:
        failed[key] = RecordingResult.failed(
            ids[key], source or h5_path(resolver, key), reason,
            extra={"run_key": list(key), "split": split_of_key[key], "dataset": cfg.dataset})

    for key, reason in located.errors.items():
        fail(key, reason)
    infos: Dict[RunKey, RunInfo] = {}
    for key, path in located.paths.items():
        try:
            infos[key] = check_run(path, key, cfg.segment_seconds)
        except LibriBrainError as err:
            fail(key, str(err), path)
    train_ok = [k for k in selection.train if k in infos]
    if not train_ok:
        raise LibriBrainError("no usable training run:\n  " + "\n  ".join(
            r.reason for r in failed.values()))
    sfreq = infos[train_ok[0]].sfreq
    for key in list(infos):
        if infos[key].sfreq != sfreq:
            fail(key, f"run {format_run_key(key)} ({infos[key].path}): sample_frequency "
                      f"{infos[key].sfreq} differs from {sfreq} of the training runs")
            del infos[key]
    chunk_samples = max(1, int(round(cfg.chunk_seconds * sfreq)))
    segment_samples = int(round(cfg.segment_seconds * sfreq))
    def source(key: RunKey) -> RunSource:
        return RunSource(cfg.data_path, cfg.dataset, proc, key, root, chunk_samples, cfg.fsync)

    # Statistics of the training runs only (streamed, cached per run for resume).
    train_ok = [k for k in selection.train if k in infos]
    pooled = RunningStats()
    if cfg.standardize:
        tasks = [RecordingTask(ids[k], infos[k].path, source(k)) for k in train_ok]
        for key, res in zip(train_ok, run_recordings(
                _stats_worker, tasks, cfg.jobs, cfg.progress, desc="channel statistics")):
            if res.status == "failed":
                fail(key, res.reason, infos.pop(key).path)
            else:
                pooled.merge(RunningStats.from_dict(res.extra["stats"]))
        stats_keys = [k for k in train_ok if k in infos]
        if not stats_keys:
            raise LibriBrainError("no training run could be read for statistics:\n  "
                                  + "\n  ".join(r.reason for r in failed.values()))
        if not (np.isfinite(pooled.mean).all() and np.isfinite(pooled.m2).all()):
            bad = np.flatnonzero(~np.isfinite(pooled.mean + pooled.m2)).tolist()
            raise LibriBrainError(
                f"training statistics are not finite for channels {bad[:10]}: NaN/inf in "
                "the training runs " + "; ".join(format_run_key(k) for k in stats_keys))
        stats = ChannelStats.from_running(pooled, standardize=True)
        stats.run_keys = stats_keys
    else:
        stats = ChannelStats(np.zeros(N_CHANNELS), np.ones(N_CHANNELS), standardize=False)
    stats.clip, stats.sfreq, stats.dataset, stats.preprocessing_str = \
        cfg.clip, sfreq, cfg.dataset, proc
    if stats.zero_std_channels:
        warnings.warn(f"flat channels in the training runs (left centred, not scaled): "
                      f"{stats.zero_std_channels}", stacklevel=2)

    params = {
        "input": "libribrain", "dataset": cfg.dataset, "data_path": os.path.abspath(
            cfg.data_path), "preprocessing_str": proc, "sfreq": sfreq,
        "segment_seconds": cfg.segment_seconds, "segment_samples": segment_samples,
        "dtype": cfg.dtype, "standardize": cfg.standardize, "clip": cfg.clip,
        "stats_sha1": _stats_digest(stats), "stats_train_run_keys": [
            list(k) for k in stats.run_keys],
    }
    fingerprint = params_fingerprint(params)
    order = [k for k in split_of_key if k in infos]  # train then valid, pnpl order
    tasks = [
        RecordingTask(ids[k], infos[k].path, SegmentJob(
            source(k), split=split_of_key[k], fingerprint=fingerprint,
            means=tuple(stats.means.tolist()), stds=tuple(stats.stds.tolist()),
            standardize=cfg.standardize, clip=cfg.clip, sfreq=sfreq,
            segment_samples=segment_samples, dtype=cfg.dtype, n_times=infos[k].n_times,
            channel_names=tuple(channel_names(infos[k].path))))
        for k in order
    ]
    results = run_recordings(_segment_worker, tasks, cfg.jobs, cfg.progress,
                                 desc="LibriBrain runs")
    for key, res in zip(order, results):
        if res.status == "failed":  # name the run key in the reason as well
            if format_run_key(key) not in res.reason:
                res.reason = f"run {format_run_key(key)} ({res.source}): {res.reason}"
            res.extra.update({"run_key": list(key), "split": split_of_key[key]})
    all_results = results + list(failed.values())
    os.makedirs(dest, exist_ok=True)
    save_channel_stats(stats, dest)
    splits = fixed_splits(all_results, {ids[k]: v for k, v in split_of_key.items()})
    params.update({"train_run_keys": [list(k) for k in selection.train],
                   "valid_run_keys": [list(k) for k in selection.valid],
                   "exclude_run_keys": [list(k) for k in selection.excluded],
                   "channel_stats": STATS_FILENAME})
    outputs = finalize_outputs(dest, root, all_results, params, 0.0, 0, qc=cfg.qc,
                                   splits=splits)
    n_failed = sum(r.status == "failed" for r in all_results)
    return {"results": all_results, "selection": selection, "stats": stats,
            "outputs": outputs, "failed": n_failed}


def _stats_digest(stats: ChannelStats) -> str:
    h = hashlib.sha1()
    h.update(np.asarray(stats.means, np.float64).tobytes())
    h.update(np.asarray(stats.stds, np.float64).tobytes())
    return h.hexdigest()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
