"""Cutting a chunk stream into fixed-length segments and writing them atomically."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from ..io.atomic import atomic_save_npy, fsync_dir


@dataclasses.dataclass
class Segment:
    """One fixed-length segment: slot ``index`` covers samples ``[start, start + n)``."""

    index: int
    start: int
    data: np.ndarray


class Segmenter:
    """Cut a stream of ``(channels, n)`` chunks into consecutive fixed-length segments.

    Segment ``k`` covers output samples ``[k * L, (k + 1) * L)``. A segment is dropped
    (and counted in :attr:`dropped` under the span's reason) when it overlaps one of
    ``bad_spans``, or counted under ``"nan"`` when it contains a non-finite value.
    Trailing samples shorter than one segment are counted in :attr:`tail_samples`.
    Memory is bounded by one chunk plus one segment.

    Parameters
    ----------
    segment_samples : int
        ``L``, samples per segment.
    bad_spans : mapping of str to sequence of (int, int), optional
        Reason -> half-open ``[start, stop)`` sample intervals (output rate) to avoid,
        e.g. ``{"acquisition_skip": [...], "bad_annotation": [...]}``. A segment
        overlapping several is counted once, under the first reason in mapping order.
    """

    def __init__(self, segment_samples: int,
                 bad_spans: Optional[Mapping[str, Sequence[tuple[int, int]]]] = None):
        if segment_samples < 1:
            raise ValueError(f"segment_samples must be >= 1, got {segment_samples}")
        self.segment_samples = int(segment_samples)
        self.bad_spans = {k: np.asarray(sorted(v), dtype=np.int64).reshape(-1, 2)
                          for k, v in (bad_spans or {}).items()}
        self.dropped: Counter = Counter()
        self.written = 0
        self.tail_samples = 0
        self._buf: Optional[np.ndarray] = None
        self._fill = 0
        self._index = 0

    def _bad_reason(self, start: int, stop: int) -> Optional[str]:
        for reason, spans in self.bad_spans.items():
            if len(spans) and np.any((spans[:, 0] < stop) & (spans[:, 1] > start)):
                return reason
        return None

    def _emit(self, data: np.ndarray) -> Optional[Segment]:
        k = self._index
        self._index += 1
        start = k * self.segment_samples
        reason = self._bad_reason(start, start + self.segment_samples)
        if reason is None and not np.isfinite(data).all():
            reason = "nan"
        if reason is not None:
            self.dropped[reason] += 1
            return None
        self.written += 1
        return Segment(k, start, data)

    def feed(self, chunk: np.ndarray) -> Iterator[Segment]:
        """Consume one ``(channels, n)`` chunk; yield the segments it completes."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 2:
            raise ValueError(f"chunks must be (channels, n), got shape {chunk.shape}")
        L = self.segment_samples
        pos, n = 0, chunk.shape[1]
        while pos < n:
            if self._fill == 0 and n - pos >= L:  # whole segment inside the chunk: no copy
                seg = self._emit(chunk[:, pos:pos + L])
                pos += L
            else:
                if self._buf is None or self._buf.shape[0] != chunk.shape[0]:
                    self._buf = np.empty((chunk.shape[0], L), dtype=chunk.dtype)
                take = min(L - self._fill, n - pos)
                self._buf[:, self._fill:self._fill + take] = chunk[:, pos:pos + take]
                self._fill += take
                pos += take
                if self._fill < L:
                    continue
                self._fill = 0
                seg = self._emit(self._buf.copy())
            if seg is not None:
                yield seg

    def finish(self) -> int:
        """End of stream: returns (and records) the number of leftover tail samples."""
        self.tail_samples, self._fill = self._fill, 0
        return self.tail_samples

    def segments(self, chunks: Iterable[np.ndarray]) -> Iterator[Segment]:
        """Yield all kept segments of ``chunks`` then call :meth:`finish`."""
        for chunk in chunks:
            yield from self.feed(chunk)
        self.finish()


def write_segments(segments: Iterable[Segment], segments_root: str | os.PathLike,
                   recording_id: str, dtype: str = "float32", fsync: bool = True
                   ) -> list[list]:
    """Write segments as ``SEGMENTS_ROOT/<recording_id>/<index:06d>.npy`` atomically.

    Parameters
    ----------
    segments : iterable of Segment
        E.g. :meth:`Segmenter.segments`.
    segments_root : path-like
        Root of all segments (the manifests' first line).
    recording_id : str
        Subdirectory (must exist, see :func:`prepare_recording_dir`).
    dtype : str
        ``"float32"`` or ``"float16"``.
    fsync : bool
        See :func:`atomic_save_npy`.

    Returns
    -------
    rows : list of [str, int]
        ``[relative_path, num_time_samples]`` per written segment, in time order.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    root = Path(segments_root)
    rows = []
    # One writer thread: file writes and fsyncs (which release the GIL) overlap with the
    # production of the next segments. Files are still written and renamed one at a
    # time, in order; at most `max_pending` segments wait in memory; a write error is
    # raised here (at the latest before returning).
    max_pending = 2
    pending: collections.deque = collections.deque()
    with cf.ThreadPoolExecutor(max_workers=1) as writer:
        try:
            for seg in segments:
                rel = f"{recording_id}/{seg.index:06d}.npy"
                data = np.array(seg.data, dtype=dtype, copy=True)  # the producer may reuse it
                pending.append(writer.submit(atomic_save_npy, root / rel, data, fsync))
                rows.append([rel, int(seg.data.shape[1])])
                while len(pending) > max_pending:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
    if fsync and rows:
        fsync_dir(root / recording_id)
    return rows


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` runs of True in a 1-D boolean mask."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))
