"""MEG recordings MNE can read -> streamed, preprocessed ``.npy`` segments.

The MNE-specific half of ``tools/make_manifest.py raw|bids`` (the input-agnostic half is
:mod:`meg2vec_fairseq.preprocessing.segments`):

* discovery: :func:`discover_recordings` (files/folders under roots; ``.fif``, CTF
  ``.ds``, KIT ``.sqd``/``.con``, BTi/4D ``c,rf*``) and :func:`discover_bids` (mne-bids,
  datatype ``meg``); split FIF parts are found by content (:func:`split_continuations`)
  and every file not used is reported with its reason,
* channel selection: :func:`select_channels` (MEG mags and grads only; reference sensors
  and ``info['bads']`` excluded; padded with zeros or truncated to ``n_channels``),
* streaming DSP, plain NumPy/SciPy and reusable by other inputs:
  :class:`StreamingResampler` (chunked ``scipy.signal.resample_poly``) and
  :class:`StreamingSOSFilter` (chunked ``scipy.signal.sosfilt``),
* :func:`process_recording`: one recording, two streaming passes, bounded memory.

Preprocessing of one recording (:class:`PreprocessParams`)
----------------------------------------------------------
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

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy import signal

from ..errors import RecordingError  # noqa: F401  (re-exported)
from .segments import (
    RecordingResult,
    RecordingTask,
    Segment,
    Segmenter,
    load_done_marker,
    make_recording_ids,
    params_fingerprint,
    prepare_recording_dir,
    qc_spectrum,
    remove_recording_dir,
    write_done_marker,
    write_segments,
)

__all__ = [
    "DEFAULT_PATTERNS",
    "PreprocessParams",
    "RecordingError",
    "StreamingResampler",
    "StreamingSOSFilter",
    "TrimmedMoments",
    "design_bandpass",
    "design_resampling_filter",
    "discover_bids",
    "discover_recordings",
    "make_tasks",
    "open_raw",
    "process_recording",
    "rate_ratio",
    "select_channels",
    "split_continuations",
]

#: Default discovery patterns (matched against file/folder names, recursively).
DEFAULT_PATTERNS = ("*.fif", "*.fif.gz", "*.ds", "*.sqd", "*.con", "c,rf*")
# FIF files that are not raw recordings (MNE naming conventions), skipped by discovery.
_NOT_RAW = re.compile(
    r"(-|_)(epo|ave|cov|fwd|inv|trans|ica|sol|proj|annot|bem|src|dip|morph|tfr|eve|"
    r"coh|csd|dense|head|fine-cal|ct_sparse)\.fif(\.gz)?$", re.IGNORECASE)
# Names MNE gives split continuation parts; only orders the header reads of
# split_continuations (whether a file is a part is read from the files themselves).
_NUMBERED_PART = re.compile(r"(-\d+\.fif(\.gz)?$)|(_split-\d+_)", re.IGNORECASE)
_PIPELINE_VERSION = "recordings-v2"  # v2: implausible amplitudes, trimmed statistics




# ------------------------------------------------------------------------ parameters
@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    """Preprocessing options shared by the ``raw`` and ``bids`` subcommands.

    Attributes
    ----------
    sfreq : float
        Output sampling rate (Hz).
    l_freq, h_freq : float
        Band-pass edges (Hz); 0 disables that edge.
    segment_seconds : float
        Segment length; segments have ``round(segment_seconds * sfreq)`` samples.
    n_channels : int
        Rows per segment: MEG channels padded with zeros or truncated to this.
    dtype : str
        ``"float32"`` or ``"float16"``.
    l_order, h_order : int
        Butterworth orders of the high-pass and low-pass edges.
    chunk_seconds : float
        Input read per step (memory/speed trade-off; does not change the result).
    flat_ratio : float
        A channel whose standard deviation (resampled, not band-passed; robust, see
        :class:`TrimmedMoments`) is below this fraction of the median over channels of
        its type is flat.
    max_abs_mag, max_abs_grad : float
        Largest physically plausible absolute value of a magnetometer (T) and a planar
        gradiometer (T/m) sample as read. MEG signals are ~1e-13..1e-11 T and the
        largest interference SQUID/OPM sensors report is ~1e-9..1e-8 T, so 1e-6 T (and
        1e-6 T over a 1 cm baseline, 1e-4 T/m) is ~100x beyond anything real; above
        it a sample is corrupt (a flipped float exponent bit gives ~1e27) and its span
        is dropped like a NaN span (``"implausible_amplitude"`` in the report).
    qc_seconds : float
        Input/output duration used for the ``qc.png`` spectra.
    fsync : bool
        fsync every segment (durability against power loss; slower on some disks).
    """

    sfreq: float = 250.0
    l_freq: float = 1.0
    h_freq: float = 40.0
    segment_seconds: float = 5.0
    n_channels: int = 306
    dtype: str = "float32"
    l_order: int = 4
    h_order: int = 8
    chunk_seconds: float = 10.0
    flat_ratio: float = 1e-4
    max_abs_mag: float = 1e-6
    max_abs_grad: float = 1e-4
    qc_seconds: float = 20.0
    fsync: bool = True

    def validate(self) -> None:
        """Raise ValueError for option combinations that can never work."""
        if self.sfreq <= 0:
            raise ValueError(f"--sfreq must be > 0, got {self.sfreq}")
        if self.l_freq < 0 or self.h_freq < 0:
            raise ValueError("--l-freq/--h-freq must be >= 0 (0 disables the edge)")
        if self.h_freq and self.h_freq >= self.sfreq / 2:
            raise ValueError(f"--h-freq {self.h_freq} Hz must be below the output Nyquist "
                             f"frequency {self.sfreq / 2} Hz (--sfreq {self.sfreq})")
        if self.l_freq and self.h_freq and self.l_freq >= self.h_freq:
            raise ValueError(f"--l-freq {self.l_freq} must be below --h-freq {self.h_freq}")
        if self.segment_samples < 1:
            raise ValueError("--segment-seconds gives less than one sample")
        if self.n_channels < 1:
            raise ValueError("--n-channels must be >= 1")
        if self.dtype not in ("float32", "float16"):
            raise ValueError("--dtype must be float32 or float16")
        if self.chunk_seconds < 1:
            raise ValueError("chunk_seconds must be >= 1")

    @property
    def segment_samples(self) -> int:
        """Samples per segment at the output rate."""
        return int(round(self.segment_seconds * self.sfreq))

    def fingerprint_dict(self) -> dict[str, Any]:
        """Options that change the output (not chunking, fsync or QC)."""
        d = dataclasses.asdict(self)
        for k in ("chunk_seconds", "qc_seconds", "fsync"):
            d.pop(k)
        d["pipeline"] = _PIPELINE_VERSION
        return d


# ---------------------------------------------------------------------- streaming DSP
class StreamingResampler:
    """Chunked, exact equivalent of ``scipy.signal.resample_poly(x, up, down, axis=-1)``.

    Feeding the signal in chunks of any sizes through :meth:`process` and then calling
    :meth:`flush` returns, concatenated, what ``resample_poly(x, up, down, axis=-1,
    window=taps)`` (zero padding) returns for the whole signal. Only
    ``~len(taps) / up`` input samples are kept between calls.

    Parameters
    ----------
    up, down : int
        Rational rate change ``up / down`` (reduced by their gcd).
    taps : ndarray, optional
        Odd-length linear-phase low-pass FIR at rate ``up * sfreq_in`` (see
        :func:`design_resampling_filter`); default: ``resample_poly``'s own design
        (Kaiser window, beta 5, ``20 * max(up, down) + 1`` taps).
    """

    def __init__(self, up: int, down: int, taps: Optional[np.ndarray] = None):
        g = math.gcd(int(up), int(down))
        self.up, self.down = int(up) // g, int(down) // g
        self.identity = self.up == self.down == 1
        if taps is None:
            max_rate = max(self.up, self.down, 2)  # (the filter is unused when identity)
            half_len = 10 * max_rate  # same design as resample_poly's default
            taps = signal.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0))
        taps = np.asarray(taps, dtype=np.float64)
        if taps.ndim != 1 or len(taps) % 2 == 0:
            raise ValueError("taps must be a 1-D odd-length FIR")
        self.taps = taps
        half_len = (len(taps) - 1) // 2
        n_pre_pad = self.down - half_len % self.down
        # Leading zeros put output sample 0 at the filter centre; they are then skipped.
        self.h = np.concatenate([np.zeros(n_pre_pad), taps * self.up])
        self.n_pre_remove = (half_len + n_pre_pad) // self.down
        self._buf: Optional[np.ndarray] = None  # input kept for the filter overlap
        self._buf_start = 0  # input index of _buf[:, 0], always a multiple of down
        self._n_in = 0
        self._next = self.n_pre_remove  # next index of the full upfirdn output to emit

    @property
    def support_out(self) -> int:
        """Half-width of the filter in output samples (how far an input sample spreads)."""
        return int(math.ceil(len(self.h) / 2 / self.down)) + 1

    def n_out(self, n_in: int) -> int:
        """Output length for ``n_in`` input samples (as ``resample_poly``)."""
        return -(-n_in * self.up // self.down)

    def _first_needed(self, j: int) -> int:
        """Smallest input index that output ``j`` (of the full upfirdn output) uses."""
        return max(-(-(j * self.down - (len(self.h) - 1)) // self.up), 0)

    def _compute(self, buf: np.ndarray, start: int, j0: int, j1: int) -> np.ndarray:
        """Outputs ``[j0, j1)`` from ``buf``, the input from index ``start`` on.

        ``start`` must be a multiple of ``down`` (so the polyphase phases line up) and
        ``buf`` must hold every input these outputs use.
        """
        off = start * self.up // self.down
        last = ((j1 - 1) * self.down) // self.up - start  # last input used
        full = signal.upfirdn(self.h, buf[:, :last + 1], self.up, self.down, axis=-1)
        return full[:, j0 - off:j1 - off]

    def _emit(self, x: Optional[np.ndarray], stop: int) -> np.ndarray:
        """Outputs ``[self._next, stop)`` from the kept tail and the new input ``x``."""
        tail, a, j = self._buf, self._buf_start, self._next
        if x is None:  # flush: the tail is already zero padded
            out = self._compute(tail, a, j, stop)
        else:
            x_start = self._n_in - x.shape[1]
            aligned = -(-x_start // self.down) * self.down
            # Outputs from j_mid on use only x: computed on a view of x (no big copy).
            j_mid = j if aligned == 0 else (
                ((aligned - 1) * self.up + len(self.h) - 1) // self.down + 1)
            j_mid = min(max(j_mid, j), stop)
            parts = []
            if j_mid > j:  # the few outputs straddling the tail and x
                need = ((j_mid - 1) * self.down) // self.up + 1 - x_start
                both = np.concatenate([tail, x[:, :max(need, 0)]], axis=1)
                parts.append(self._compute(both, a, j, j_mid))
            if stop > j_mid:
                parts.append(self._compute(x[:, aligned - x_start:], aligned, j_mid, stop))
            out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        self._next = stop
        # Keep only the input later outputs still need (copied: the chunk can be freed).
        new_start = max(a, (self._first_needed(stop) // self.down) * self.down)
        if x is None:
            self._buf = tail[:, new_start - a:]
        elif new_start >= self._n_in - x.shape[1]:
            self._buf = x[:, new_start - (self._n_in - x.shape[1]):].copy()
        else:
            self._buf = np.concatenate([tail[:, new_start - a:], x], axis=1)
        self._buf_start = new_start
        return out

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed ``(channels, n)`` samples; return the outputs now fully determined."""
        if self.identity:
            return x
        if self._buf is None:
            self._buf = np.empty((x.shape[0], 0))
        self._n_in += x.shape[1]
        stop = (self._n_in * self.up - 1) // self.down + 1
        if stop <= self._next:  # no new output yet: keep all the input
            self._buf = np.concatenate([self._buf, x], axis=1)
            return np.empty((x.shape[0], 0))
        return self._emit(x, stop)

    def flush(self, n_channels: int) -> np.ndarray:
        """End of signal: return the remaining outputs (zero padding past the end)."""
        if self.identity:
            return np.empty((n_channels, 0))
        stop = self.n_pre_remove + self.n_out(self._n_in)
        if self._buf is None or stop <= self._next:
            return np.empty((n_channels, 0))
        pad = np.zeros((self._buf.shape[0], len(self.h) // self.up + self.down + 2))
        self._buf = np.concatenate([self._buf, pad], axis=1)
        return self._emit(None, stop)


class StreamingSOSFilter:
    """Chunked ``scipy.signal.sosfilt`` along the last axis, state carried over.

    The state starts at the steady state for the first input sample
    (``sosfilt_zi(sos) * x[:, 0]``), so a constant offset causes no start transient.
    Identical to filtering the whole signal at once with that ``zi``.
    """

    def __init__(self, sos: Optional[np.ndarray]):
        self.sos = sos
        self._zi: Optional[np.ndarray] = None

    def process(self, x: np.ndarray) -> np.ndarray:
        """Filter the next ``(channels, n)`` chunk."""
        if self.sos is None or x.shape[1] == 0:
            return x
        if self._zi is None:
            self._zi = signal.sosfilt_zi(self.sos)[:, None, :] * x[None, :, :1]
        y, self._zi = signal.sosfilt(self.sos, x, axis=-1, zi=self._zi)
        return y


class TrimmedMoments:
    """Streamed per-channel mean and std that ignore short stretches of extreme variance.

    One corrupt or extreme stretch (a sensor jump, a few bad samples the amplitude check
    let through) must not set a channel's scale: with plain moments its huge variance
    would shrink the channel to a constant after z-scoring, and a healthy channel could
    look flat next to it. The samples are cut into consecutive blocks of ``block``
    samples (by position, so chunk sizes do not change the result); per block and
    channel the variance ``v`` is binned by its power of two (``np.frexp(v)[1]``, zero
    variance in a bin of its own), and per bin the sample count, sum and sum of squares
    are accumulated. :meth:`finish` finds each channel's median block variance bin and
    leaves out the bins :data:`OUTLIER_LOG2` or more powers of two above it (block
    variance ~64-256x, std ~8-16x the median block's); mean and std come from the rest.
    Data without such blocks gives exactly the plain mean and std; a channel constant in
    most blocks gets std 0 (flat). Only blocks with at least half of ``block`` good
    samples vote for the median (a short block's variance is noisy); all are binned.

    Memory is one ``(4, channels)`` array per occupied bin (a few tens for real data),
    independent of the recording's length; the cost is one pass with a sum and a dot
    product per block, as for plain moments. (Exact medians/MADs would need the whole
    recording; per-chunk medians would depend on the chunking.)

    Parameters
    ----------
    n_channels : int
        Rows of the chunks given to :meth:`add`.
    block : int
        Samples per block (1 s of the signal is a good choice).
    """

    #: Bins this many powers of two above the median block variance bin are left out.
    OUTLIER_LOG2 = 7
    _ZERO_BIN = -(1 << 20)  # zero variance: below every frexp exponent

    def __init__(self, n_channels: int, block: int):
        self.n_channels, self.block = int(n_channels), max(int(block), 1)
        self._bins: dict[int, np.ndarray] = {}  # exponent -> (votes, n, s1, s2) x channels
        self._part = np.zeros((2, self.n_channels))  # s1, s2 of the open block
        self._part_n = 0
        self._pos = 0
        self.count = 0  # good samples seen
        self.excluded = np.zeros(self.n_channels, dtype=np.int64)  # set by finish()

    def add(self, x: np.ndarray, good: Optional[np.ndarray] = None) -> None:
        """Add a ``(channels, n)`` chunk; ``good`` (``n`` bools) marks the samples to use."""
        n = x.shape[1]
        cut = (-self._pos) % self.block  # where the next block starts in this chunk
        edges = [0] + list(range(cut or self.block, n, self.block)) + [n]
        for a, b in zip(edges[:-1], edges[1:]):
            if b <= a:
                continue
            xp = x[:, a:b] if good is None else x[:, a:b][:, good[a:b]]
            if xp.shape[1]:
                self._part[0] += xp.sum(axis=1)
                self._part[1] += np.einsum("ij,ij->i", xp, xp)
                self._part_n += xp.shape[1]
                self.count += xp.shape[1]
            if (self._pos + b) % self.block == 0:
                self._close_block()
        self._pos += n

    def _close_block(self) -> None:
        n = self._part_n
        if n:
            s1, s2 = self._part
            v = s2 / n - (s1 / n) ** 2
            exp = np.where(v > 0, np.frexp(np.maximum(v, 0.0))[1], self._ZERO_BIN)
            vote = float(2 * n >= self.block)
            for e in np.unique(exp).tolist():
                m = exp == e
                acc = self._bins.setdefault(e, np.zeros((4, self.n_channels)))
                acc[0, m] += vote
                acc[1, m] += n
                acc[2, m] += s1[m]
                acc[3, m] += s2[m]
        self._part = np.zeros((2, self.n_channels))
        self._part_n = 0

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Close the last block; return per-channel ``(mean, std)`` (0 where no sample).

        Also sets :attr:`excluded`: per channel, the samples left out as outliers.
        """
        self._close_block()
        if not self._bins:
            return np.zeros(self.n_channels), np.zeros(self.n_channels)
        keys = np.array(sorted(self._bins))
        acc = np.stack([self._bins[k] for k in keys.tolist()])  # (bins, 4, channels)
        votes = np.cumsum(acc[:, 0], axis=0)
        # Median bin: the first whose cumulative votes reach half (no votes: keep all).
        med = keys[np.argmax(votes >= votes[-1] / 2, axis=0)]
        keep = (keys[:, None] < med[None, :] + self.OUTLIER_LOG2) | (votes[-1] == 0)
        n, s1, s2 = ((acc[:, i] * keep).sum(axis=0) for i in (1, 2, 3))
        self.excluded = (acc[:, 1].sum(axis=0) - n).astype(np.int64)
        safe = np.maximum(n, 1)
        mean = s1 / safe
        return mean, np.sqrt(np.maximum(s2 / safe - mean ** 2, 0.0))


def design_bandpass(l_freq: float, h_freq: float, sfreq: float, l_order: int = 4,
                    h_order: int = 8) -> Optional[np.ndarray]:
    """Butterworth high-pass (``l_order``) cascaded with low-pass (``h_order``) as SOS.

    An edge of 0 is left out; returns None when both are 0. The steeper low-pass edge
    attenuates 50 Hz line noise by ~30 dB with the default 40 Hz edge.
    """
    parts = []
    if l_freq:
        parts.append(signal.butter(l_order, l_freq, "highpass", fs=sfreq, output="sos"))
    if h_freq:
        parts.append(signal.butter(h_order, h_freq, "lowpass", fs=sfreq, output="sos"))
    return np.concatenate(parts) if parts else None


def design_resampling_filter(sfreq_in: float, sfreq_out: float, up: int, down: int,
                             h_freq: float, atten_db: float = 60.0) -> Optional[np.ndarray]:
    """Short anti-alias FIR for resampling when a low-pass at ``h_freq`` follows.

    Only what would alias into ``[0, h_freq]`` must go: the filter passes up to
    ``h_freq`` and stops (``atten_db``) from ``sfreq_out - h_freq``; what it lets alias
    lands above ``h_freq``, where the Butterworth low-pass removes it. Far shorter (so
    faster) than a filter with its stopband at ``sfreq_out / 2``: 23 taps for
    1 kHz -> 250 Hz with a 40 Hz edge. Returns None (use ``resample_poly``'s default
    design) when there is no ``h_freq`` or no rate change.
    """
    if not h_freq or up == down:
        return None
    fs_up = sfreq_in * up
    width = (sfreq_out - 2 * h_freq) / (fs_up / 2)
    if width <= 0:
        return None
    numtaps, beta = signal.kaiserord(atten_db, width)
    numtaps = max(numtaps, 3) | 1  # odd: linear phase, centred output
    return signal.firwin(numtaps, sfreq_out / 2, window=("kaiser", beta), fs=fs_up)


def rate_ratio(sfreq_in: float, sfreq_out: float) -> tuple[int, int]:
    """``(up, down)`` with ``up / down ~= sfreq_out / sfreq_in`` (denominator <= 1000)."""
    frac = Fraction(sfreq_out / sfreq_in).limit_denominator(1000)
    return frac.numerator, frac.denominator


# -------------------------------------------------------------------------- discovery
_BIDS_MEG_EXTENSIONS = (".fif", ".ds", ".sqd", ".con", ".bin")


def _is_bti(path: Path) -> bool:
    return path.is_file() and path.name.startswith("c,rf")


def _bti_file(folder: Path) -> Optional[Path]:
    """The BTi/4D data file (``c,rf*``) of a folder, if any."""
    hits = sorted(p for p in folder.iterdir() if _is_bti(p))
    return hits[0] if hits else None


def _matches(path: Path, patterns: Sequence[str]) -> bool:
    return any(path.match(p) for p in patterns)


def discover_recordings(roots: Sequence[str | os.PathLike],
                        patterns: Optional[Sequence[str]] = None,
                        not_used: Optional[list[dict[str, str]]] = None
                        ) -> tuple[list[tuple[Path, Path]], list[RecordingResult]]:
    """Find recordings under ``roots``.

    Parameters
    ----------
    roots : sequence of path-like
        Directories searched recursively, or single recordings (a file, or a CTF
        ``.ds`` folder).
    patterns : sequence of str, optional
        Glob patterns for names (``--pattern``); default :data:`DEFAULT_PATTERNS`.
        Nothing is looked for inside ``.ds`` folders.
    not_used : list, optional
        If given, one ``{"path": ..., "reason": ...}`` is appended for every file seen
        under a directory root and not used as a recording: names matching no pattern,
        derived FIF files (``-epo.fif``, ``-cov.fif``, ...) that MNE cannot open as raw
        data (a file named as a ROOT is always tried), and continuation parts of split
        FIF recordings (see
        :func:`split_continuations`; recognised by content, never by name).

    Returns
    -------
    found : list of (path, root)
        Sorted, unique recordings and the root each was found under.
    problems : list of RecordingResult
        A ``"failed"`` result per root that does not exist or holds no recording.
    """
    patterns = tuple(patterns or DEFAULT_PATTERNS)
    found: dict[Path, Path] = {}
    walked: set[Path] = set()  # found by searching a directory (not named explicitly)
    problems = []
    skipped: list[dict[str, str]] = []
    no_match = f"name matches none of the patterns {', '.join(patterns)}"
    for root in map(Path, roots):
        if not root.exists():
            problems.append(RecordingResult.failed(
                _problem_id(root), str(root), f"{root}: path does not exist"))
            continue
        if root.is_file() or root.suffix.lower() == ".ds":
            found.setdefault(root.resolve(), root)
            continue
        hits = []
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            for d in list(dirnames):
                if d.lower().endswith(".ds"):
                    dirnames.remove(d)  # a CTF dataset is one recording
                    if _matches(here / d, patterns):
                        hits.append(here / d)
                    else:
                        skipped.append({"path": str(here / d), "reason": no_match})
            dirnames.sort()
            for f in sorted(filenames):
                if _matches(here / f, patterns):
                    hits.append(here / f)
                else:
                    skipped.append({"path": str(here / f), "reason": no_match})
        if not hits:
            problems.append(RecordingResult.failed(
                _problem_id(root), str(root),
                f"{root}: no recordings found (directory is empty or nothing matches "
                f"{', '.join(patterns)})"))
        for h in hits:
            found.setdefault(h.resolve(), root)
            walked.add(h.resolve())
    # A derived-looking file named explicitly as a ROOT is processed (and fails loudly).
    derived = {p: _derived_reason(p) for p in found if p in walked and _NOT_RAW.search(p.name)}
    for p, reason in derived.items():
        if reason is not None:  # MNE cannot read it as raw data: not a recording
            del found[p]
            skipped.append({"path": str(p), "reason": reason})
    for p, reason in split_continuations(list(found)).items():
        del found[p]
        skipped.append({"path": str(p), "reason": reason})
    if not_used is not None:
        not_used.extend(sorted(skipped, key=lambda d: d["path"]))
    ordered = sorted(found.items(), key=lambda kv: str(kv[0]))
    return [(p, r) for p, r in ordered], problems


def _derived_reason(path: Path) -> Optional[str]:
    """Why a file named like a derived FIF file is not a recording (None: it is one).

    The name (``-epo.fif``, ``_cov.fif``, ...) is only a hint: a file MNE opens as raw
    data is a recording whatever its name (e.g. ``sub-01_task-head.fif``).
    """
    import mne

    try:
        mne.io.read_raw_fif(path, preload=False, on_split_missing="ignore",
                            verbose="error")
    except Exception as err:
        kind = _NOT_RAW.search(path.name).group(2)
        return (f"derived FIF file ('{kind}' in the name) without raw data "
                f"({type(err).__name__}: {err})")
    return None


def split_continuations(paths: Sequence[Path]) -> dict[Path, str]:
    """Continuation parts of split FIF recordings among ``paths``, with the reason.

    MNE writes a long FIF recording as parts (``x_raw.fif``, ``x_raw-1.fif``, ... or
    BIDS ``_split-01``, ``_split-02``) and reads them all through the first part, which
    names the next one in a ``FIFF_REF_FILE_NAME`` tag (``raw.filenames`` lists the
    chain). A file is a continuation only when another file of ``paths`` continues
    into it, never because of its name: ``sub-01.fif`` or ``meg-12.fif`` are ordinary
    recordings. Every ``.fif``/``.fif.gz`` is opened header-only (no samples read);
    files MNE cannot open stay recordings (and fail later with the reason).

    Parameters
    ----------
    paths : sequence of Path
        Resolved candidate recordings.

    Returns
    -------
    dict
        Continuation part -> reason naming the file it is read through.
    """
    import mne

    fifs = [p for p in paths if p.name.lower().endswith((".fif", ".fif.gz"))]
    continued: dict[Path, str] = {}
    # Open likely first parts first so that their parts need not be opened at all
    # (only a speed-up: the result does not depend on the order).
    for p in sorted(fifs, key=lambda q: (_NUMBERED_PART.search(q.name) is not None, q)):
        if p in continued:
            continue
        try:
            raw = mne.io.read_raw_fif(p, preload=False, on_split_missing="ignore",
                                      verbose="error")
        except Exception:
            continue
        for part in (Path(f).resolve() for f in raw.filenames[1:]):
            continued.setdefault(part, f"continuation part of split recording {p} "
                                       f"(read through it)")
    members = set(fifs)
    return {p: why for p, why in continued.items() if p in members}


def _problem_id(root: Path) -> str:
    return "_input_" + make_recording_ids([(root, root.parent)])[0]


def discover_bids(bids_root: str | os.PathLike, subjects: Optional[Sequence[str]] = None,
                  sessions: Optional[Sequence[str]] = None,
                  tasks: Optional[Sequence[str]] = None,
                  runs: Optional[Sequence[str]] = None,
                  not_used: Optional[list[dict[str, str]]] = None
                  ) -> tuple[list[tuple[Path, Path]], list[RecordingResult]]:
    """Find the MEG recordings of a BIDS dataset with mne-bids.

    Parameters
    ----------
    bids_root : path-like
        BIDS dataset root.
    subjects, sessions, tasks, runs : sequence of str, optional
        Keep only these entities (labels without the ``sub-``/``ses-``/... prefix).
    not_used : list, optional
        As in :func:`discover_recordings`: the matching BIDS files that are not
        recordings (sidecars, continuation parts of split recordings), with reasons.

    Returns
    -------
    found, problems
        As :func:`discover_recordings`; ``found`` paths are the recordings' files (or
        ``.ds`` folders), with ``bids_root`` as root.
    """
    bids_root = Path(bids_root)
    if not bids_root.is_dir():
        what = "path does not exist" if not bids_root.exists() else "is not a directory"
        return [], [RecordingResult.failed(_problem_id(bids_root), str(bids_root),
                                           f"{bids_root}: {what}")]
    from mne_bids import find_matching_paths

    paths = find_matching_paths(
        bids_root, subjects=subjects, sessions=sessions, tasks=tasks, runs=runs,
        datatypes="meg", suffixes="meg", extensions=None)
    found = {}
    skipped = []
    for bp in paths:
        fpath = Path(bp.fpath)
        if not fpath.exists():
            continue
        # FIF, CTF .ds, KIT, FIL/Artemis .bin files; BTi/4D data is a folder of c,rf* files.
        if fpath.suffix.lower() in _BIDS_MEG_EXTENSIONS or (
                fpath.is_dir() and _bti_file(fpath) is not None):
            found.setdefault(fpath.resolve(), bids_root)
        else:
            skipped.append({"path": str(fpath), "reason": f"not MEG data (BIDS file with "
                                                         f"extension {fpath.suffix!r})"})
    for p, reason in split_continuations(list(found)).items():
        del found[p]
        skipped.append({"path": str(p), "reason": reason})
    if not_used is not None:
        not_used.extend(sorted(skipped, key=lambda d: d["path"]))
    if not found:
        return [], [RecordingResult.failed(
            _problem_id(bids_root), str(bids_root),
            f"{bids_root}: no MEG recordings found (datatype meg"
            + "".join(f", {k}={v}" for k, v in (("subjects", subjects), ("sessions", sessions),
                                               ("tasks", tasks), ("runs", runs)) if v)
            + ")")]
    return sorted(found.items(), key=lambda kv: str(kv[0])), []


def make_tasks(found: Sequence[tuple[Path, Path]], params: PreprocessParams,
               segments_root: str | os.PathLike, overwrite: bool = False
               ) -> list[RecordingTask]:
    """Turn discovered recordings into :class:`RecordingTask` for :func:`process_recording`."""
    ids = make_recording_ids(found)
    opts = {"params": params, "segments_root": str(segments_root), "overwrite": overwrite}
    return [RecordingTask(rid, str(path), dict(opts)) for rid, (path, _) in zip(ids, found)]


# ------------------------------------------------------------------------ reading/picks
def open_raw(path: str | os.PathLike):
    """Open a recording without loading its data (``preload=False``).

    Raises
    ------
    RecordingError
        Naming the file, when it does not exist or MNE cannot read it.
    """
    import mne

    path = Path(path)
    if not path.exists():
        raise RecordingError(f"{path}: path does not exist")
    if path.is_dir() and path.suffix.lower() != ".ds":
        bti = _bti_file(path)
        if bti is None:
            raise RecordingError(f"{path}: is a directory but neither a CTF .ds folder nor "
                                 f"a BTi/4D folder (no c,rf* file)")
        path = bti
    try:
        if _is_bti(path):
            return mne.io.read_raw_bti(path, preload=False, verbose="error")
        return mne.io.read_raw(path, preload=False, verbose="error")
    except Exception as err:
        raise RecordingError(f"{path}: cannot read recording (truncated or corrupt file?): "
                             f"{type(err).__name__}: {err}") from err


#: Bytes a FIF file may hold after its last data buffer (end tags, next-file reference,
#: tag directory of a long recording) before the data are taken as cut short.
_FIF_TAIL_SLACK = 1 << 16


def _check_fif_complete(raw, path: str) -> None:
    """Fail when MNE's reading of a FIF file stops well before the file ends.

    A damaged tag header inside the data makes MNE end the recording there without a
    word (random bytes halfway through a file give half the recording). After the last
    data buffer a FIF file holds only end tags and small blocks, so more than
    ``max(64 KiB, 1 %)`` of the file past it means the rest was not read.
    """
    for extra in getattr(raw, "_raw_extras", []):  # one per split part; FIF only
        if not isinstance(extra, dict) or not extra.get("ent") or not extra.get("filename"):
            continue
        fname = extra["filename"]
        ends = [e.pos + 16 + e.size for e in extra["ent"] if e is not None]  # None: skip
        try:
            size = os.path.getsize(fname)
        except OSError:
            continue
        end = max(ends, default=size)
        if size - end > max(_FIF_TAIL_SLACK, size // 100):
            raise RecordingError(
                f"{path}: MNE reads data only up to byte {end} of {size} in {fname} "
                f"({raw.n_times / raw.info['sfreq']:.1f} s); the rest is unreadable "
                f"(damaged tag structure: truncated or corrupt file?)")


def _system(raw, picks: Sequence[int]) -> str:
    from mne.io.constants import FIFF

    coils = {raw.info["chs"][i]["coil_type"] & 0xFFFF for i in picks}
    if coils & {FIFF.FIFFV_COIL_CTF_GRAD}:
        family = "ctf"
    elif coils & {FIFF.FIFFV_COIL_KIT_GRAD}:
        family = "kit"
    elif coils & {FIFF.FIFFV_COIL_MAGNES_MAG, FIFF.FIFFV_COIL_MAGNES_GRAD}:
        family = "bti"
    elif any(3000 <= c < 4000 for c in coils):
        family = "neuromag"
    else:
        family = "meg"
    return f"{family}{len(picks)}" if family == "neuromag" else family


def select_channels(info, n_channels: int, path: str = "") -> dict[str, Any]:
    """MEG data channels to use, and what was excluded.

    Magnetometers and gradiometers only: reference sensors (``ref_meg``) and
    ``info["bads"]`` are excluded; the rest, in file order, is truncated to
    ``n_channels`` (or padded later with zero rows).

    Returns
    -------
    sel : dict
        ``picks`` (indices into ``info``), ``names``, ``types``, ``policy``
        (``"exact"``/``"pad"``/``"truncate"``), ``output_names`` (``n_channels`` long,
        ``"PAD"`` for padding), ``excluded`` (``{"reference", "bads", "truncated"}``),
        ``n_meg``.

    Raises
    ------
    RecordingError
        When there is no usable MEG channel.
    """
    import mne

    meg = mne.pick_types(info, meg=True, ref_meg=False, exclude=[])
    refs = mne.pick_types(info, meg=False, ref_meg=True, exclude=[])
    names = info["ch_names"]
    if len(meg) == 0:
        kinds = sorted(set(info.get_channel_types()))
        raise RecordingError(f"{path}: no MEG channels (channel types present: "
                             f"{', '.join(kinds) or 'none'})")
    bads = [names[i] for i in meg if names[i] in info["bads"]]
    good = [i for i in meg if names[i] not in info["bads"]]
    if not good:
        raise RecordingError(f"{path}: all {len(meg)} MEG channels are marked bad")
    used, cut = good[:n_channels], good[n_channels:]
    policy = "exact" if len(good) == n_channels else ("pad" if len(good) < n_channels
                                                       else "truncate")
    used_names = [names[i] for i in used]
    return {
        "picks": used,
        "names": used_names,
        "types": info.get_channel_types(picks=used),
        "policy": policy,
        "output_names": used_names + ["PAD"] * (n_channels - len(used)),
        "excluded": {"reference": [names[i] for i in refs], "bads": bads,
                     "truncated": [names[i] for i in cut]},
        "n_meg": len(good),
    }


def _bad_annotation_seconds(raw) -> dict[str, list[tuple[float, float]]]:
    """``BAD*`` annotations as ``(start, stop)`` seconds from the first sample."""
    spans: dict[str, list[tuple[float, float]]] = {"acquisition_skip": [],
                                                   "bad_annotation": []}
    ann = raw.annotations
    # Onsets are relative to meas_date (then they include first_samp) or to the data start.
    offset = raw.first_time if ann.orig_time is not None else 0.0
    for onset, duration, desc in zip(ann.onset, ann.duration, ann.description):
        if desc.lower().startswith("bad"):
            key = "acquisition_skip" if desc.upper() == "BAD_ACQ_SKIP" else "bad_annotation"
            spans[key].append((onset - offset, onset - offset + duration))
    return spans


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


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` runs of True in a 1-D boolean mask."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


# ------------------------------------------------------------------------ processing
def _read(raw, picks: Sequence[int], start: int, stop: int) -> np.ndarray:
    """``raw.get_data`` for one chunk, naming the file when the data cannot be read."""
    if len(picks) == len(raw.ch_names) and list(picks) == list(range(len(picks))):
        picks = None  # every channel, in order: MNE's faster path without picking
    try:
        return raw.get_data(picks=picks, start=start, stop=stop)
    except Exception as err:
        fname = raw.filenames[0] if raw.filenames else "recording"
        raise RecordingError(
            f"{fname}: cannot read samples {start}-{stop} of {raw.n_times} (truncated or "
            f"corrupt file?): {type(err).__name__}: {err}") from err


def _prefetched(raw, picks: Sequence[int], starts: Sequence[int], chunk: int
                ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, data)`` chunks, reading the next one in a thread meanwhile.

    Reading (file I/O, calibration) mostly releases the GIL, so it overlaps with the
    filtering of the previous chunk. At most two chunks are in memory.
    """
    import concurrent.futures as cf

    n_in = raw.n_times
    starts = list(starts)
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(_read, raw, picks, starts[0], min(starts[0] + chunk, n_in)) \
            if starts else None
        for i, start in enumerate(starts):
            x = nxt.result()
            if i + 1 < len(starts):
                s2 = starts[i + 1]
                nxt = pool.submit(_read, raw, picks, s2, min(s2 + chunk, n_in))
            yield start, x


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
    head = _read(raw, picks, 0, min(n_in, max(int(round(sf_in)), 1)))
    with np.errstate(all="ignore"):
        # Implausible values must not shift the offset of the whole recording.
        head = np.where(np.abs(head) <= lim, head, np.nan)
        offset = np.nan_to_num(np.nanmean(head, axis=1))[:, None]
    qc_need = int(params.qc_seconds * sf_in)
    for start, x64 in _prefetched(raw, picks, range(0, n_in, chunk), chunk):
        # Cheap test first (NaN fails the comparison); bad samples are rare.
        ok = bool((np.maximum(x64.max(axis=1), -x64.min(axis=1)) <= lim[:, 0]).all())
        if not ok:
            with np.errstate(invalid="ignore"):
                implausible = np.abs(x64) > lim
            for a, b in _runs(implausible.any(axis=0)):
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
            for a, b in _runs(bad.any(axis=0)):
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


def process_recording(task: RecordingTask) -> RecordingResult:
    """Preprocess one recording into segments (the worker of :func:`run_recordings`).

    ``task.options``: ``params`` (:class:`PreprocessParams`), ``segments_root``,
    ``overwrite`` (ignore an earlier done marker). Bad input raises
    :class:`RecordingError`, which the runner turns into a ``"failed"`` result.
    """
    params: PreprocessParams = task.options["params"]
    root = Path(task.options["segments_root"])
    fingerprint = params_fingerprint(params.fingerprint_dict())
    if not task.options.get("overwrite"):
        done = load_done_marker(root, task.recording_id, fingerprint)
        if done is not None:
            return done
    t0 = time.perf_counter()
    path = task.source
    raw = open_raw(path)
    _check_fif_complete(raw, path)
    sel = select_channels(raw.info, params.n_channels, path)
    picks = sel["picks"]
    sf_in = float(raw.info["sfreq"])
    result = RecordingResult(
        task.recording_id, str(path), system=_system(raw, picks),
        n_channels=params.n_channels, n_meg_channels=sel["n_meg"],
        channel_policy=sel["policy"], channel_names=sel["output_names"],
        excluded_channels=sel["excluded"], bad_channels=sel["excluded"]["bads"],
        sfreq_in=sf_in, sfreq_out=params.sfreq, seconds_in=round(raw.n_times / sf_in, 4))
    if sf_in < params.sfreq:
        raise RecordingError(f"{path}: sampling rate {sf_in:g} Hz is below the requested "
                             f"output rate --sfreq {params.sfreq:g} Hz")
    if params.h_freq and params.h_freq >= sf_in / 2:
        raise RecordingError(f"{path}: sampling rate {sf_in:g} Hz is too low for "
                             f"--h-freq {params.h_freq:g} Hz (Nyquist {sf_in / 2:g} Hz)")
    up, down = rate_ratio(sf_in, params.sfreq)
    resampler = StreamingResampler(up, down, design_resampling_filter(
        sf_in, params.sfreq, up, down, params.h_freq))
    ratio = resampler.up / resampler.down
    n_out = resampler.n_out(raw.n_times)
    L = params.segment_samples
    if n_out < L:
        raise RecordingError(
            f"{path}: recording is {raw.n_times / sf_in:.3g} s long, shorter than one "
            f"segment ({params.segment_seconds:g} s)")
    margin = resampler.support_out if not resampler.identity else 0
    seconds = _bad_annotation_seconds(raw)
    spans = {k: _to_samples(v, sf_in * ratio, margin, n_out) for k, v in seconds.items()}
    nan_spans: list[tuple[int, int]] = []
    spans["nan"] = nan_spans  # filled while streaming, before the outputs it covers
    spans["implausible_amplitude"] = []  # likewise
    bandpass = StreamingSOSFilter(design_bandpass(params.l_freq, params.h_freq,
                                                  params.sfreq, params.l_order,
                                                  params.h_order))
    rec_dir = prepare_recording_dir(root, task.recording_id)
    try:
        result = _write_recording(raw, task, params, sel, result, resampler, bandpass,
                                  spans, nan_spans, margin, rec_dir)
    except BaseException:
        # A failed recording leaves nothing of the tool's behind (no marker, no partial
        # segments); only files make_manifest wrote are removed, never anything else.
        remove_recording_dir(root, task.recording_id)
        raise
    result.elapsed_s = round(time.perf_counter() - t0, 3)
    write_done_marker(root, result, fingerprint)
    return result


def _write_recording(raw, task: RecordingTask, params: PreprocessParams, sel: dict,
                     result: RecordingResult, resampler: StreamingResampler,
                     bandpass: StreamingSOSFilter, spans: dict, nan_spans: list,
                     margin: int, rec_dir: Path) -> RecordingResult:
    """The two streaming passes of :func:`process_recording` (writes the segments)."""
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
        flat = _flat_channels(std_in, sel["types"], params.flat_ratio) | (std <= 0)
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


#: A channel's z-scored output counts as constant in a segment below this std.
_CONSTANT_STD = 1e-3
#: ... unless its input there is also this quiet (relative to its typical std).
_QUIET_INPUT = 1e-2


def _check_not_constant(segments: Iterable[Segment], raw, picks: Sequence[int], sel: dict,
                        flat: np.ndarray, std_in: np.ndarray, in_per_out: float,
                        path: str) -> Iterator[Segment]:
    """Pass segments through; raise if a used channel became constant in one.

    Robust statistics and the amplitude check should make this impossible; it is the
    last line of defence against writing a segment in which a live input channel was
    flattened (e.g. scaled by a std that corrupt samples blew up). A channel whose
    z-scored output has std below :data:`_CONSTANT_STD` in a segment is checked against
    its input over the same span (read again, only then): if the input's std there is
    above :data:`_QUIET_INPUT` x its typical std, the recording fails.
    """
    n_ch = len(picks)
    live = ~np.asarray(flat)
    for seg in segments:
        low = np.flatnonzero(live & (seg.data[:n_ch].std(axis=1) < _CONSTANT_STD))
        if len(low):
            a = int(math.floor(seg.start * in_per_out))
            b = min(int(math.ceil((seg.start + seg.data.shape[1]) * in_per_out)),
                    raw.n_times)
            x = _read(raw, [picks[i] for i in low], a, max(b, a + 1))
            rel = x.std(axis=1) / np.where(std_in[low] > 0, std_in[low], np.inf)
            bad = low[rel > _QUIET_INPUT]
            if len(bad):
                sf = raw.info["sfreq"]
                raise RecordingError(
                    f"{path}: channel(s) {', '.join(sel['names'][i] for i in bad[:5])} "
                    f"would be constant in segment {seg.index} ({a / sf:.2f}-{b / sf:.2f} s)"
                    f" although the input there is not (extreme or corrupt samples?); "
                    f"refusing to write such segments")
        yield seg


def _flat_channels(std: np.ndarray, types: Sequence[str], ratio: float) -> np.ndarray:
    """Channels whose input std is 0 or below ``ratio`` x the median of their type."""
    flat = std <= 0
    types = np.asarray(types)
    for kind in set(types.tolist()):
        sel = types == kind
        ref = np.median(std[sel])
        flat[sel] |= std[sel] < ratio * ref
    return flat
