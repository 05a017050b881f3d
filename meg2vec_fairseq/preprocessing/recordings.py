"""One MNE recording -> streamed, preprocessed ``.npy`` segments (raw and bids inputs)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import RecordingError
from .dsp import (
    StreamingResampler,
    StreamingSOSFilter,
    design_bandpass,
    design_resampling_filter,
    rate_ratio,
)
from .mne_raw import (
    bad_annotation_seconds,
    check_fif_complete,
    open_raw,
    prefetched_chunks,
    read_chunk,
    select_channels,
    system_name,
)
from .params import PreprocessParams
from .pipeline import process_resumable
from .report import qc_spectrum
from .results import RecordingResult, RecordingTask, make_recording_ids, params_fingerprint
from .segmenter import Segment, Segmenter, true_runs, write_segments
from .stats import CONSTANT_STD, QUIET_INPUT, TrimmedMoments, flat_channels


def make_tasks(found: Sequence[tuple[Path, Path]], params: PreprocessParams,
               segments_root: str | os.PathLike, overwrite: bool = False
               ) -> list[RecordingTask]:
    """Turn discovered recordings into :class:`RecordingTask` for :func:`process_recording`."""
    ids = make_recording_ids(found)
    opts = {"params": params, "segments_root": str(segments_root), "overwrite": overwrite}
    return [RecordingTask(rid, str(path), dict(opts)) for rid, (path, _) in zip(ids, found)]


def _to_samples(spans: Sequence[tuple[float, float]], sfreq: float, margin: int, n: int
                ) -> list[tuple[int, int]]:
    """Second spans -> half-open sample spans, widened by ``margin``, clipped to ``n``."""
    out = []
    for a, b in spans:
        start = max(int(math.floor(a * sfreq)) - margin, 0)
        stop = min(int(math.ceil(b * sfreq)) + margin, n)
        if stop > start:
            out.append((start, stop))
    return out


def _span_mask(spans: Sequence[tuple[int, int]], start: int, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for a, b in spans:
        a, b = max(a - start, 0), min(b - start, n)
        if b > a:
            mask[a:b] = True
    return mask


def _stream_filtered(raw, picks: Sequence[int], params: PreprocessParams,
                     resampler: StreamingResampler, bandpass: StreamingSOSFilter,
                     nan_spans: list[tuple[int, int]], ratio: float, margin: int,
                     qc_in: list, limits: Optional[np.ndarray] = None,
                     amp_spans: Optional[list[tuple[int, int]]] = None,
                     amp_counts: Optional[np.ndarray] = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pass 1 generator: ``(resampled, band-passed)`` chunks at the output rate.

    The input is offset-corrected and rounded to float32 (the precision MEG files are
    stored in) in one pass, then resampled in float64. Also records NaN spans (output
    samples, widened by ``margin``) in ``nan_spans`` and the first ``params.qc_seconds``
    of input in ``qc_in``. Samples whose absolute value as read exceeds their channel's
    ``limits`` (physically implausible, see :class:`PreprocessParams`) are handled like
    NaN: set to the offset, their span recorded in ``amp_spans`` and counted per channel
    in ``amp_counts``.
    """
    sf_in = raw.info["sfreq"]
    n_in = raw.n_times
    chunk = max(int(params.chunk_seconds * sf_in), 1)
    lim = (np.full(len(picks), np.inf) if limits is None else np.asarray(limits))[:, None]
    head = read_chunk(raw, picks, 0, min(n_in, max(int(round(sf_in)), 1)))
    with np.errstate(all="ignore"):
        # Implausible values must not shift the offset of the whole recording.
        head = np.where(np.abs(head) <= lim, head, np.nan)
        offset = np.nan_to_num(np.nanmean(head, axis=1))[:, None]
    qc_need = int(params.qc_seconds * sf_in)
    for start, x64 in prefetched_chunks(raw, picks, range(0, n_in, chunk), chunk):
        # Cheap test first (NaN fails the comparison); bad samples are rare.
        ok = bool((np.maximum(x64.max(axis=1), -x64.min(axis=1)) <= lim[:, 0]).all())
        if not ok:
            with np.errstate(invalid="ignore"):
                implausible = np.abs(x64) > lim
            for a, b in true_runs(implausible.any(axis=0)):
                if amp_spans is not None:
                    amp_spans.append((int(math.floor((start + a) * ratio)) - margin,
                                      int(math.ceil((start + b) * ratio)) + margin))
            if amp_counts is not None:
                amp_counts += implausible.sum(axis=1)
        x = np.empty(x64.shape, dtype=np.float32)
        with np.errstate(over="ignore"):  # beyond float32: inf, a NaN span below
            np.subtract(x64, offset, out=x, casting="same_kind")
        del x64
        if not ok:
            x[implausible] = 0.0
            bad = ~np.isfinite(x)
            for a, b in true_runs(bad.any(axis=0)):
                nan_spans.append((int(math.floor((start + a) * ratio)) - margin,
                                  int(math.ceil((start + b) * ratio)) + margin))
            x[bad] = 0.0
        if qc_need > 0:
            qc_in.append(x[:, :qc_need].copy())
            qc_need -= qc_in[-1].shape[1]
        r = resampler.process(x)
        yield r, bandpass.process(r)
    r = resampler.flush(len(picks))
    yield r, bandpass.process(r)


@dataclass
class _Plan:
    """What :func:`process_recording` learnt before touching the recording's folder."""

    raw: Any
    sel: dict
    result: RecordingResult
    resampler: StreamingResampler
    bandpass: StreamingSOSFilter
    spans: dict
    nan_spans: list
    margin: int


def process_recording(task: RecordingTask) -> RecordingResult:
    """Preprocess one recording into segments (the worker of ``run_recordings``).

    Parameters
    ----------
    task : RecordingTask
        ``task.options``: ``params`` (:class:`~.params.PreprocessParams`),
        ``segments_root``, ``overwrite`` (ignore an earlier done marker).

    Returns
    -------
    result : RecordingResult

    Raises
    ------
    RecordingError
        Bad input (the runner turns it into a ``"failed"`` result).

    Notes
    -----
    1. Read ``chunk_seconds`` at a time with ``raw.get_data(picks, start, stop)`` (never
       ``preload``; the next chunk is read in a thread meanwhile); subtract each channel's
       mean over the first second (only reduces edge transients: the band-pass removes any
       constant) and round to float32, the precision MEG files are stored in.
    2. NaN samples and physically implausible ones (``|x|`` above
       ``max_abs_mag``/``max_abs_grad`` as read, i.e. corrupt) are replaced by 0 and their
       span (plus a margin) marked bad. A FIF file MNE stops reading well before its end
       fails (:func:`_check_fif_complete`).
    3. Resample to ``sfreq`` with a polyphase FIR (exactly ``scipy.signal.resample_poly``
       with the short anti-alias filter of :func:`design_resampling_filter`: flat to
       ``h_freq``, -60 dB from ``sfreq - h_freq``), carrying the input overlap across chunk
       borders.
    4. Band-pass ``l_freq``-``h_freq`` at the output rate with causal Butterworth filters
       (:func:`design_bandpass`: high-pass order 4, low-pass order 8, as second-order
       sections), filter state carried across chunk borders and initialised to the steady
       state of the first sample.
    5. The result is written to a float32 temp file while per-channel moments are
       accumulated over samples outside bad spans, trimmed of outlier 1-s blocks
       (:class:`TrimmedMoments`; pass 1). Pass 2 reads it back a block at a time and
       z-scores each channel with those statistics; flat channels (trimmed standard
       deviation of the resampled, not yet band-passed signal outside bad spans below
       ``flat_ratio`` times the median of the channels of the same type) are zeroed.
    6. Consecutive non-overlapping segments; those overlapping ``BAD_ACQ_SKIP``, other
       ``BAD*`` annotations, NaN or implausible-amplitude spans are dropped and counted. A
       segment in which a live channel became constant fails the recording
       (:func:`_check_not_constant`).

    Streaming steps 3-4 give the same numbers as running ``resample_poly`` and ``sosfilt``
    over the whole recording at once (the tests check this to float32 precision); memory is
    one chunk plus filter state, independent of recording length.
    """
    params: PreprocessParams = task.options["params"]
    root = Path(task.options["segments_root"])
    return process_resumable(root, task.recording_id,
                             params_fingerprint(params.fingerprint_dict()),
                             lambda plan, rec_dir: _write_recording(task, params, plan, rec_dir),
                             check=lambda: _plan(task, params),
                             overwrite=bool(task.options.get("overwrite")))


def _plan(task: RecordingTask, params: PreprocessParams) -> _Plan:
    """Open and check the recording, design the filters (nothing written yet)."""
    path = task.source
    raw = open_raw(path)
    check_fif_complete(raw, path)
    sel = select_channels(raw.info, params.n_channels, path)
    picks = sel["picks"]
    sf_in = float(raw.info["sfreq"])
    result = RecordingResult(
        task.recording_id, str(path), system=system_name(raw, picks),
        n_channels=params.n_channels, n_meg_channels=sel["n_meg"],
        channel_policy=sel["policy"], channel_names=sel["output_names"],
        excluded_channels=sel["excluded"], bad_channels=sel["excluded"]["bads"],
        sfreq_in=sf_in, sfreq_out=params.sfreq, seconds_in=round(raw.n_times / sf_in, 4))
    if sf_in < params.sfreq:
        raise RecordingError(f"{path}: sampling rate {sf_in:g} Hz is below the requested "
                             f"output rate sfreq={params.sfreq:g} Hz")
    if params.h_freq and params.h_freq >= sf_in / 2:
        raise RecordingError(f"{path}: sampling rate {sf_in:g} Hz is too low for "
                             f"h_freq={params.h_freq:g} Hz (Nyquist {sf_in / 2:g} Hz)")
    up, down = rate_ratio(sf_in, params.sfreq)
    resampler = StreamingResampler(up, down, design_resampling_filter(
        sf_in, params.sfreq, up, down, params.h_freq))
    ratio = resampler.up / resampler.down
    n_out = resampler.n_out(raw.n_times)
    if n_out < params.segment_samples:
        raise RecordingError(
            f"{path}: recording is {raw.n_times / sf_in:.3g} s long, shorter than one "
            f"segment ({params.segment_seconds:g} s)")
    margin = resampler.support_out if not resampler.identity else 0
    seconds = bad_annotation_seconds(raw)
    spans = {k: _to_samples(v, sf_in * ratio, margin, n_out) for k, v in seconds.items()}
    nan_spans: list[tuple[int, int]] = []
    spans["nan"] = nan_spans  # filled while streaming, before the outputs it covers
    spans["implausible_amplitude"] = []  # likewise
    bandpass = StreamingSOSFilter(design_bandpass(params.l_freq, params.h_freq,
                                                  params.sfreq, params.l_order,
                                                  params.h_order))
    return _Plan(raw, sel, result, resampler, bandpass, spans, nan_spans, margin)


def _write_recording(task: RecordingTask, params: PreprocessParams, plan: _Plan,
                     rec_dir: Path) -> RecordingResult:
    """The two streaming passes of :func:`process_recording` (writes the segments)."""
    raw, sel, result, resampler, bandpass = (plan.raw, plan.sel, plan.result, plan.resampler,
                                             plan.bandpass)
    spans, nan_spans, margin = plan.spans, plan.nan_spans, plan.margin
    path, root, picks = task.source, rec_dir.parent, sel["picks"]
    sf_in = float(raw.info["sfreq"])
    ratio = resampler.up / resampler.down
    L = params.segment_samples
    tmp_path = rec_dir / ".stream.f32.tmp"
    n_ch = len(picks)
    pos = 0
    qc_in: list = []
    block = max(int(round(params.sfreq)), 1)  # 1-s blocks for the trimmed statistics
    out_stats = TrimmedMoments(n_ch, block)  # band-passed: the z-score
    in_stats = TrimmedMoments(n_ch, block)  # resampled, not band-passed: flatness
    limits = np.array([params.max_abs_grad if t == "grad" else params.max_abs_mag
                       for t in sel["types"]])
    amp_counts = np.zeros(n_ch, dtype=np.int64)
    # Pass 1: stream -> float32 temp file (time-major), statistics over good samples.
    try:
        with open(tmp_path, "wb") as tmp:
            for r, y in _stream_filtered(raw, picks, params, resampler, bandpass, nan_spans,
                                         ratio, margin, qc_in, limits,
                                         spans["implausible_amplitude"], amp_counts):
                n = y.shape[1]
                if n == 0:
                    continue
                good = ~(_span_mask([s for v in spans.values() for s in v], pos, n))
                good = None if good.all() else good
                out_stats.add(y, good)
                # Flatness is judged before the band-pass (no ringing at gaps; bad spans
                # and their filter margins excluded).
                in_stats.add(r, good)
                tmp.write(np.ascontiguousarray(y.T, dtype=np.float32).tobytes())
                pos += n
        if out_stats.count < 2:
            raise RecordingError(f"{path}: no usable data (everything is inside BAD "
                                 f"annotations, NaN or implausible-amplitude spans)")
        mean, std = out_stats.finish()
        std_in = in_stats.finish()[1]
        flat = flat_channels(std_in, sel["types"], params.flat_ratio) | (std <= 0)
        scale = np.where(flat, 0.0, 1.0 / np.where(std > 0, std, 1.0))
        result.flat_channels = [sel["names"][i] for i in np.flatnonzero(flat)]
        # Pass 2: z-score, zero flat channels, pad, segment, write.
        segmenter = Segmenter(L, bad_spans={k: v for k, v in spans.items()})
        qc_out: list = []
        qc_need = int(params.qc_seconds * params.sfreq)

        def normalized() -> Iterator[np.ndarray]:
            nonlocal qc_need
            block = L * max(1, int(params.chunk_seconds * params.sfreq) // L)
            with open(tmp_path, "rb") as f:
                while True:
                    buf = f.read(block * n_ch * 4)
                    if not buf:
                        break
                    z = np.frombuffer(buf, dtype=np.float32).reshape(-1, n_ch).T
                    z = ((z - mean[:, None].astype(np.float32))
                         * scale[:, None].astype(np.float32))
                    if qc_need > 0:
                        qc_out.append(z[~flat, :qc_need])
                        qc_need -= qc_out[-1].shape[1]
                    if params.n_channels > n_ch:
                        z = np.concatenate(
                            [z, np.zeros((params.n_channels - n_ch, z.shape[1]), z.dtype)])
                    yield z

        checked = _check_not_constant(segmenter.segments(normalized()), raw, picks, sel,
                                      flat, std_in, 1 / ratio, path)
        rows = write_segments(checked, root, task.recording_id,
                              dtype=params.dtype, fsync=params.fsync)
    finally:
        tmp_path.unlink(missing_ok=True)
    result.segments = rows
    result.segments_written = len(rows)
    result.segments_dropped = dict(sorted(segmenter.dropped.items()))
    result.seconds_kept = round(len(rows) * L / params.sfreq, 4)
    result.tail_seconds = round(segmenter.tail_samples / params.sfreq, 4)
    result.qc = {
        "before": qc_spectrum(np.concatenate(qc_in, axis=1), sf_in) if qc_in else {},
        "after": (qc_spectrum(np.concatenate(qc_out, axis=1), params.sfreq)
                  if qc_out else {}),
    }
    result.extra = {
        "band": [params.l_freq, params.h_freq],
        "resample_up_down": [resampler.up, resampler.down],
        "sfreq_out_effective": sf_in * ratio,
        "first_samp": int(raw.first_samp),
        "bad_spans_seconds": {k: round(sum(b - a for a, b in v) / params.sfreq, 3)
                              for k, v in spans.items()},
        # Samples above max_abs_mag/max_abs_grad, per channel (their spans are dropped).
        "implausible_samples": {sel["names"][i]: int(amp_counts[i])
                                for i in np.flatnonzero(amp_counts)},
        # Seconds left out of each channel's statistics as outlier blocks (TrimmedMoments).
        "stats_outlier_seconds": {
            sel["names"][i]: round(float(out_stats.excluded[i]) / params.sfreq, 3)
            for i in np.flatnonzero(out_stats.excluded)},
    }
    if not rows:
        raise RecordingError(f"{path}: no segment left after dropping bad spans "
                             f"({result.segments_dropped})")
    return result


def _check_not_constant(segments: Iterable[Segment], raw, picks: Sequence[int], sel: dict,
                        flat: np.ndarray, std_in: np.ndarray, in_per_out: float,
                        path: str) -> Iterator[Segment]:
    """Pass segments through; raise if a used channel became constant in one.

    Robust statistics and the amplitude check should make this impossible; it is the
    last line of defence against writing a segment in which a live input channel was
    flattened (e.g. scaled by a std that corrupt samples blew up). A channel whose
    z-scored output has std below :data:`CONSTANT_STD` in a segment is checked against
    its input over the same span (read again, only then): if the input's std there is
    above :data:`QUIET_INPUT` x its typical std, the recording fails.
    """
    n_ch = len(picks)
    live = ~np.asarray(flat)
    for seg in segments:
        low = np.flatnonzero(live & (seg.data[:n_ch].std(axis=1) < CONSTANT_STD))
        if len(low):
            a = int(math.floor(seg.start * in_per_out))
            b = min(int(math.ceil((seg.start + seg.data.shape[1]) * in_per_out)),
                    raw.n_times)
            x = read_chunk(raw, [picks[i] for i in low], a, max(b, a + 1))
            rel = x.std(axis=1) / np.where(std_in[low] > 0, std_in[low], np.inf)
            bad = low[rel > QUIET_INPUT]
            if len(bad):
                sf = raw.info["sfreq"]
                raise RecordingError(
                    f"{path}: channel(s) {', '.join(sel['names'][i] for i in bad[:5])} "
                    f"would be constant in segment {seg.index} ({a / sf:.2f}-{b / sf:.2f} s)"
                    f" although the input there is not (extreme or corrupt samples?); "
                    f"refusing to write such segments")
        yield seg
