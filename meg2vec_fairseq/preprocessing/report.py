"""The run's outputs: manifests, ``report.json`` and the ``qc.png`` spectra, written last."""

from __future__ import annotations

import io
import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..io.atomic import TMP_SUFFIX, atomic_write_bytes, atomic_write_text
from ..io.manifest import write_manifest
from .results import RecordingResult
from .splits import assign_splits

_REPORT_VERSION = 1


def write_manifests(dest: str | os.PathLike, segments_root: str | os.PathLike,
                    splits: Mapping[str, Sequence[Sequence]]) -> dict[str, Path]:
    """Write ``<split>.tsv`` in fairseq's format, atomically.

    First line: absolute ``segments_root``; then ``relative_path<TAB>num_samples`` rows in
    the given order (see :func:`~meg2vec_fairseq.preprocessing.splits.assign_splits`).
    Returns ``{split: path}``.
    """
    dest = Path(dest)
    root = str(Path(segments_root).resolve())
    out = {}
    for name, rows in splits.items():
        path = dest / f"{name}.tsv"
        write_manifest(path, root, rows)
        out[name] = path
    return out


def summarize(results: Sequence[RecordingResult]) -> dict[str, Any]:
    """Counts for the summary line and ``report.json``."""
    by_status = Counter(r.status for r in results)
    dropped: Counter = Counter()
    for r in results:
        dropped.update(r.segments_dropped)
    return {
        "recordings": len(results),
        "ok": by_status.get("ok", 0),
        "skipped": by_status.get("skipped", 0),
        "failed": by_status.get("failed", 0),
        "segments_written": sum(r.segments_written for r in results
                                if r.status != "failed"),
        "segments_dropped": dict(sorted(dropped.items())),
        "seconds_kept": round(sum(r.seconds_kept for r in results if r.status != "failed"),
                              3),
    }


def write_report(path: str | os.PathLike, results: Sequence[RecordingResult],
                 params: Mapping[str, Any], splits: Optional[Mapping[str, Sequence]] = None,
                 not_used: Sequence[Mapping[str, str]] = ()) -> Path:
    """Write ``report.json``: parameters, summary and one entry per input recording.

    Entries are sorted by ``recording_id``; segment lists are left out (they are in the
    manifests and the done markers) and replaced by the recording's split. ``not_used``
    (``{"path", "reason"}`` per file the input search saw but did not use) becomes the
    top-level ``"not_used"`` list, counted in ``summary["not_used"]``.
    """
    split_of: dict[str, str] = {}
    for name, rows in (splits or {}).items():
        for rel, _ in rows:
            split_of.setdefault(rel.split("/", 1)[0], name)
    entries = []
    for r in sorted(results, key=lambda r: r.recording_id):
        d = r.to_dict(with_segments=False)
        d["split"] = split_of.get(r.recording_id)
        entries.append(d)
    report = {
        "version": _REPORT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": dict(params),
        "summary": {**summarize(results), "not_used": len(not_used)},
        "recordings": entries,
        "not_used": [dict(d) for d in not_used],
    }
    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray,)):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def qc_spectrum(data: np.ndarray, sfreq: float, normalize: bool = True,
                n_fft_seconds: float = 2.0, max_channels: int = 32) -> dict[str, list]:
    """Channel-averaged Welch power spectrum, small enough to keep in a result record.

    Parameters
    ----------
    data : ndarray, shape (channels, n)
        A stretch of signal (e.g. the first tens of seconds).
    sfreq : float
        Its sampling rate.
    normalize : bool
        Scale each channel to unit variance first, so that spectra of channels with
        different units (mags in T, grads in T/m) and of z-scored output are comparable.
        All-zero and non-finite channels are left out.
    n_fft_seconds : float
        Welch segment length.
    max_channels : int
        Use at most this many channels, evenly spaced (bounds time and memory).

    Returns
    -------
    spectrum : dict
        ``{"sfreq": float, "freqs": [...], "psd": [...]}``, empty lists if ``data`` is
        too short or all zero.
    """
    from scipy.signal import welch

    data = np.asarray(data)
    keep = np.isfinite(data).all(axis=1) & (data.std(axis=1) > 0) if data.size else []
    data = data[np.flatnonzero(keep)]
    if data.shape[0] > max_channels:
        data = data[np.linspace(0, data.shape[0] - 1, max_channels).round().astype(int)]
    data = data.astype(np.float64)
    if data.shape[0] == 0 or data.shape[1] < 8:
        return {"sfreq": float(sfreq), "freqs": [], "psd": []}
    if normalize:
        data = (data - data.mean(axis=1, keepdims=True)) / data.std(axis=1, keepdims=True)
    nperseg = int(min(data.shape[1], max(8, round(n_fft_seconds * sfreq))))
    freqs, psd = welch(data, fs=sfreq, nperseg=nperseg, axis=-1)
    psd = psd.mean(axis=0)
    return {"sfreq": float(sfreq), "freqs": [round(float(f), 4) for f in freqs],
            "psd": [float(p) for p in psd]}


def plot_qc(results: Sequence[RecordingResult], path: str | os.PathLike,
            max_lines: int = 30) -> Optional[Path]:
    """Draw ``qc.png``: power spectra before/after preprocessing, one line per recording.

    Uses ``result.qc["before"]`` and ``result.qc["after"]`` (see :func:`qc_spectrum`).
    Returns the path, or None when no recording has spectra (nothing is written).
    """
    items = [r for r in sorted(results, key=lambda r: r.recording_id)
             if r.status != "failed" and r.qc.get("before", {}).get("freqs")]
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, key, title in ((axes[0], "before", "before (raw, unit variance per channel)"),
                           (axes[1], "after", "after (filtered, resampled, z-scored)")):
        for r in items[:max_lines]:
            spec = r.qc.get(key) or {}
            if spec.get("freqs"):
                ax.semilogy(spec["freqs"], spec["psd"], lw=0.8, alpha=0.8,
                            label=r.recording_id[:40])
        ax.set(title=title, xlabel="frequency (Hz)", ylabel="power (1/Hz, channel mean)")
        ax.grid(True, which="both", alpha=0.3)
    band = items[0].extra.get("band")
    if band:
        for ax in axes:
            for f in band:
                if f:
                    ax.axvline(f, color="k", ls="--", lw=0.6)
    if len(items) <= 10:
        axes[1].legend(fontsize=6)
    fig.suptitle(f"Power spectra of {len(items)} recording(s)"
                 + (f" (first {max_lines} shown)" if len(items) > max_lines else ""))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def finalize_outputs(dest: str | os.PathLike, segments_root: str | os.PathLike,
                     results: Sequence[RecordingResult], params: Mapping[str, Any],
                     valid_percent: float, seed: int, qc: bool = True,
                     splits: Optional[Mapping[str, Sequence[Sequence]]] = None,
                     not_used: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    """Write, in this order, ``qc.png``, ``report.json``, ``train.tsv``/``valid.tsv``.

    Manifests come last so that their presence means the run finished. Stale temp files
    of an interrupted run are removed from ``dest`` first. ``splits`` (e.g. from
    :func:`fixed_splits`) replaces the random split by :func:`assign_splits`
    (``valid_percent`` and ``seed`` are then unused). ``not_used`` goes to
    ``report.json`` (see :func:`write_report`).

    Returns
    -------
    outputs : dict
        ``{"splits": ..., "manifests": {...}, "report": path, "qc": path or None}``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob(f".*{TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
    if splits is None:
        splits = assign_splits(results, valid_percent, seed)
    qc_path = None
    if qc:
        try:
            qc_path = plot_qc(results, dest / "qc.png")
        except Exception as err:  # a figure must never cost the manifests
            print(f"warning: qc.png not written: {err}")
    report = write_report(dest / "report.json", results, params, splits, not_used)
    manifests = write_manifests(dest, segments_root, splits)
    return {"splits": splits, "manifests": manifests, "report": report, "qc": qc_path}
