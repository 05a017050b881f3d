"""Parameters of the preprocessing pipelines and their checks."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from ..constants import N_SENSORS, SFREQ
from ..errors import LibriBrainError

RunKey = Tuple[str, str, str, str]

#: Version of the raw/BIDS pipeline, part of its fingerprint (v2: implausible amplitudes,
#: trimmed statistics): done markers of other versions are not reused.
_PIPELINE_VERSION = "recordings-v2"

#: LibriBrain dataset families (``dataset``): pnpl's LibriBrain (2025) and LibriBrain100.
DATASETS = ("libribrain", "libribrain100")

#: Sentinel ``preprocessing_str``: use pnpl's default.
PNPL_DEFAULT = "pnpl-default"


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

    sfreq: float = SFREQ
    l_freq: float = 1.0
    h_freq: float = 40.0
    segment_seconds: float = 5.0
    n_channels: int = N_SENSORS
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
            raise ValueError(f"sfreq={self.sfreq} must be > 0")
        if self.l_freq < 0 or self.h_freq < 0:
            raise ValueError(f"l_freq={self.l_freq} and h_freq={self.h_freq} must be >= 0 "
                             "(0 disables the edge)")
        if self.h_freq and self.h_freq >= self.sfreq / 2:
            raise ValueError(f"h_freq={self.h_freq} Hz must be below the output Nyquist "
                             f"frequency {self.sfreq / 2} Hz (sfreq={self.sfreq})")
        if self.l_freq and self.h_freq and self.l_freq >= self.h_freq:
            raise ValueError(f"l_freq={self.l_freq} must be below h_freq={self.h_freq}")
        if self.segment_samples < 1:
            raise ValueError(f"segment_seconds={self.segment_seconds} gives less than one sample")
        if self.n_channels < 1:
            raise ValueError(f"n_channels={self.n_channels} must be >= 1")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype={self.dtype!r} must be float32 or float16")
        if self.chunk_seconds < 1:
            raise ValueError(f"chunk_seconds={self.chunk_seconds} must be >= 1")

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


@dataclass
class LibriBrainConfig:
    """Options of ``tools/make_manifest.py libribrain`` (see :func:`make_libribrain_manifests`)."""

    data_path: str
    dest: str
    dataset: str = "libribrain"
    train_partition: Optional[str] = "train"
    valid_partition: Optional[str] = "validation"
    train_run_keys: List[RunKey] = field(default_factory=list)
    valid_run_keys: List[RunKey] = field(default_factory=list)
    exclude_run_keys: List[RunKey] = field(default_factory=list)
    preprocessing_str: Optional[str] = PNPL_DEFAULT
    standardize: bool = True
    clip: Optional[float] = 10.0
    download: bool = False
    segment_seconds: float = 5.0
    dtype: str = "float32"
    jobs: int = 1
    overwrite: bool = False
    chunk_seconds: float = 30.0
    segments_root: Optional[str] = None
    progress: bool = True
    qc: bool = True
    fsync: bool = True

    def check(self) -> None:
        """Reject inconsistent options before any work (raises :class:`LibriBrainError`)."""
        if self.dataset not in DATASETS:
            raise LibriBrainError(f"unknown dataset {self.dataset!r}: choose from {DATASETS}")
        if not self.segment_seconds > 0:
            raise LibriBrainError(f"segment_seconds={self.segment_seconds} must be > 0")
        if not self.chunk_seconds > 0:
            raise LibriBrainError(f"chunk_seconds={self.chunk_seconds} must be > 0")
        if self.dtype not in ("float32", "float16"):
            raise LibriBrainError(f"dtype={self.dtype!r} must be float32 or float16")
        if self.clip is not None and not self.clip > 0:
            raise LibriBrainError(f"clip={self.clip} must be > 0 (or None)")
        if self.dtype == "float16" and not self.standardize:
            # Unstandardised LibriBrain is in tesla (~1e-12): below float16's smallest value.
            raise LibriBrainError("dtype='float16' needs standardize=True (MEG in tesla "
                                  "underflows)")
        if not os.path.isdir(self.data_path) and not self.download:
            raise LibriBrainError(
                f"data_path={self.data_path} does not exist (downloads are off; pass "
                "download=True to fetch LibriBrain into it through pnpl)"
            )
        if self.jobs < 1:
            raise LibriBrainError(f"jobs={self.jobs} must be >= 1")
