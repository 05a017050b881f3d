"""What one run did to each recording: the task, the result record, ids and fingerprints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional


@dataclasses.dataclass
class RecordingResult:
    """What happened to one input recording; one entry of ``report.json``.

    Attributes
    ----------
    recording_id : str
        Unique, filesystem-safe id; segments live in ``SEGMENTS_ROOT/<recording_id>/``.
    source : str
        The input (file, directory, BIDS path) as given/discovered.
    status : str
        ``"ok"`` (processed now), ``"skipped"`` (already done by an earlier run, reused)
        or ``"failed"`` (see ``reason``).
    reason : str
        Why it failed or was skipped; empty for ``"ok"``.
    system : str or None
        Acquisition system / reader, e.g. ``"neuromag306"``, ``"ctf"``, ``"kit"``.
    n_channels : int or None
        Rows of every segment (``--n-channels``).
    n_meg_channels : int or None
        MEG data channels available after excluding references and bad channels.
    channel_policy : str or None
        ``"exact"``, ``"pad"`` (zero rows appended) or ``"truncate"`` (first rows kept).
    channel_names : list of str
        Name of each output row, ``"PAD"`` for zero-padded rows.
    excluded_channels : dict
        ``{"reference": [...], "bads": [...], "truncated": [...]}``: MEG channels not used.
    bad_channels : list of str
        Channels marked bad in the input (excluded).
    flat_channels : list of str
        Channels detected flat (kept, but zeroed).
    sfreq_in, sfreq_out : float or None
        Input and output sampling rates (Hz).
    seconds_in : float or None
        Duration of the input.
    seconds_kept : float
        Duration covered by the written segments.
    segments_written : int
        Number of segment files.
    segments_dropped : dict
        Reason -> count of segments not written (e.g. ``"bad_annotation"``, ``"nan"``).
    tail_seconds : float
        Trailing data shorter than one segment (not written).
    segments : list of [str, int]
        ``[relative_path, num_time_samples]`` of each segment, relative to
        ``SEGMENTS_ROOT``, in time order.
    qc : dict
        Small spectra for ``qc.png`` (see :func:`qc_spectrum`): ``{"before": ...,
        "after": ...}``.
    elapsed_s : float
        Wall time of this run's processing.
    extra : dict
        Input-type specific details (JSON-serialisable).
    """

    recording_id: str
    source: str
    status: str = "ok"
    reason: str = ""
    system: Optional[str] = None
    n_channels: Optional[int] = None
    n_meg_channels: Optional[int] = None
    channel_policy: Optional[str] = None
    channel_names: list = dataclasses.field(default_factory=list)
    excluded_channels: dict = dataclasses.field(default_factory=dict)
    bad_channels: list = dataclasses.field(default_factory=list)
    flat_channels: list = dataclasses.field(default_factory=list)
    sfreq_in: Optional[float] = None
    sfreq_out: Optional[float] = None
    seconds_in: Optional[float] = None
    seconds_kept: float = 0.0
    segments_written: int = 0
    segments_dropped: dict = dataclasses.field(default_factory=dict)
    tail_seconds: float = 0.0
    segments: list = dataclasses.field(default_factory=list)
    qc: dict = dataclasses.field(default_factory=dict)
    elapsed_s: float = 0.0
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def failed(cls, recording_id: str, source: str, reason: str, **fields) -> RecordingResult:
        """A ``"failed"`` result with a human-readable ``reason``."""
        return cls(recording_id=recording_id, source=str(source), status="failed",
                   reason=reason, **fields)

    def to_dict(self, with_segments: bool = True) -> dict:
        """JSON-ready dict (``segments`` omitted when ``with_segments`` is False)."""
        d = dataclasses.asdict(self)
        if not with_segments:
            d.pop("segments")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecordingResult:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass(frozen=True)
class RecordingTask:
    """One unit of work for :func:`~meg2vec_fairseq.preprocessing.pipeline.run_recordings`.

    Attributes
    ----------
    recording_id : str
        See :func:`make_recording_ids`.
    source : str
        Input path (or any locator the input type understands).
    options : object
        What the input type's worker needs (a dict or a dataclass; picklable for
        ``jobs > 1``).
    """

    recording_id: str
    source: str
    options: Any = dataclasses.field(default_factory=dict, hash=False, compare=False)


# ------------------------------------------------------------------------------ ids
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _sanitize(text: str) -> str:
    text = _UNSAFE.sub("_", text).strip("._")
    return text or "recording"


def make_recording_ids(sources: Sequence[tuple[str | os.PathLike, str | os.PathLike]]
                       ) -> list[str]:
    """Deterministic, unique, filesystem-safe ids for recordings.

    Parameters
    ----------
    sources : sequence of (path, root)
        Each recording's path and the input root it was found under. The id is the path
        relative to its root with separators replaced by ``__`` and known MEG suffixes
        dropped (``sub-01/meg/x_raw.fif`` -> ``sub-01__meg__x_raw``); a file given as its
        own root uses its name. Colliding ids get a short hash of the absolute path.

    Returns
    -------
    ids : list of str
        In the order of ``sources``.
    """
    base = []
    for path, root in sources:
        path, root = Path(path), Path(root)
        try:
            rel = path.resolve().relative_to(root.resolve())
            rel_s = rel.as_posix() if rel.parts else path.name
        except ValueError:
            rel_s = path.name
        for suffix in (".fif.gz", ".fif", ".ds", ".sqd", ".con", ".h5", ".hdf5"):
            if rel_s.lower().endswith(suffix):
                rel_s = rel_s[: -len(suffix)]
                break
        base.append(_sanitize(rel_s.replace("/", "__")))
    counts = Counter(base)
    ids = []
    for (path, _), b in zip(sources, base):
        if counts[b] > 1:
            digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]
            b = f"{b}-{digest}"
        ids.append(b)
    return ids


def params_fingerprint(params: Mapping[str, Any]) -> str:
    """Stable hash of the preprocessing parameters (stored in the done markers).

    A done marker written with other parameters does not count as done.
    """
    blob = json.dumps(params, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]
