"""Streaming per-channel statistics and the rules built on them (flat, constant channels)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

#: A channel's normalised output counts as constant in a segment below this std ...
CONSTANT_STD = 1e-3
#: ... and that is an error unless its input there is also this quiet (in typical stds).
QUIET_INPUT = 1e-2


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


@dataclass
class RunningStats:
    """Per-channel count, mean and sum of squared deviations, updated chunk by chunk.

    float64 and the pairwise (Chan et al.) merge keep the result equal to ``np.mean`` /
    ``np.std`` (``ddof=0``, pnpl's definition) over all samples, whatever the chunking.
    """

    n: int = 0
    mean: Optional[np.ndarray] = None
    m2: Optional[np.ndarray] = None

    def update(self, chunk: np.ndarray) -> None:
        """Add a ``(channels, time)`` chunk."""
        chunk = np.asarray(chunk, dtype=np.float64)
        n = chunk.shape[1]
        if n == 0:
            return
        mean = chunk.mean(axis=1)
        m2 = ((chunk - mean[:, None]) ** 2).sum(axis=1)
        self.merge(RunningStats(n, mean, m2))

    def merge(self, other: RunningStats) -> None:
        """Add another :class:`RunningStats` (e.g. another run's)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.copy(), other.m2.copy()
            return
        total = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / total)
        self.n = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel."""
        return np.sqrt(self.m2 / self.n)

    def to_dict(self) -> dict:
        """Picklable/JSON-able form (for worker processes)."""
        return {"n": self.n, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> RunningStats:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["n"]), np.asarray(d["mean"], np.float64), np.asarray(d["m2"], np.float64))



def flat_channels(std: np.ndarray, types: Optional[Sequence[str]] = None,
                  ratio: float = 0.0) -> np.ndarray:
    """Flat channels: std not > 0, or below ``ratio`` x the median std of their type.

    Parameters
    ----------
    std : ndarray, shape (channels,)
        Per-channel standard deviations (robust ones, see :class:`TrimmedMoments`).
    types : sequence of str, optional
        Channel types (``"mag"``, ``"grad"``, ...); None: all one type.
    ratio : float
        Fraction of the type's median std below which a channel is flat; 0: only
        channels with std 0 (or NaN) are.

    Returns
    -------
    flat : ndarray of bool, shape (channels,)
    """
    std = np.asarray(std, dtype=np.float64)
    flat = ~(std > 0)
    if ratio > 0:
        types = np.asarray(["all"] * len(std) if types is None else types)
        for kind in set(types.tolist()):
            sel = types == kind
            flat[sel] |= std[sel] < ratio * np.median(std[sel])
    return flat
