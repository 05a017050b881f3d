"""Input-agnostic machinery shared by every ``tools/make_manifest.py`` subcommand.

Everything here is independent of how a recording is read (MNE, HDF5, ...). An input
type only has to produce, per recording, an iterator of preprocessed ``(channels, n)``
float chunks at the output sampling rate; this module turns that into

* segment files ``SEGMENTS_ROOT/<recording_id>/<index:06d>.npy`` written atomically
  (:func:`atomic_save_npy`, :class:`Segmenter`, :func:`write_segments`),
* a per-recording *done marker* ``SEGMENTS_ROOT/<recording_id>/_done.json`` written only
  after all segments of that recording are on disk (:func:`write_done_marker`,
  :func:`load_done_marker`, :func:`prepare_recording_dir`),
* a per-recording :class:`RecordingResult` (what ends up in ``report.json``),
* the train/valid split by recording (:func:`assign_splits`),
* the fairseq TSV manifests, ``report.json`` and ``qc.png``, written last
  (:func:`finalize_outputs`),
* a ``--jobs`` parallel runner over recordings in which one failure never stops the
  others (:func:`run_recordings`).

Guarantees (the resume contract)
--------------------------------
* A ``.npy`` file exists under its final name only when complete (temp file in the same
  directory, flush + fsync, :func:`os.replace`).
* A recording is *done* only when its marker exists, the marker's parameter fingerprint
  matches the current run and every segment it lists exists. A done recording is not
  processed again (status ``"skipped"``); a recording directory without a valid marker is
  cleared of the tool's files and the recording processed from scratch.
* Only what the tool provably wrote is ever deleted: each recording folder gets an
  ownership marker (:data:`OWNER_MARKER`) when created; a folder without it, or holding
  other files, fails that recording (:class:`ForeignDirectoryError`) and stays as is.
* One run at a time per output: :func:`lock_outputs` locks ``dest`` and the segments
  root (``flock``, released by the OS when the process dies, however it dies).
* :func:`invalidate_outputs` removes an earlier run's manifests and report before any
  segment changes, so that no manifest ever lists files that are not as it describes.
* Manifests are written last, atomically, from the markers' segment lists, sorted by
  recording id then segment path, so that ``kill -9`` at any point followed by the same
  command gives byte-identical manifests to an uninterrupted run.

Typical use by an input type (see :mod:`meg2vec_fairseq.preprocessing.recordings`)::

    def process(task: RecordingTask) -> RecordingResult:
        done = load_done_marker(segments_root, task.recording_id, fingerprint)
        if done is not None:
            return done                              # status "skipped"
        rec_dir = prepare_recording_dir(segments_root, task.recording_id)
        result = RecordingResult(task.recording_id, str(task.source))
        segmenter = Segmenter(segment_samples, bad_spans={"bad_annotation": spans})
        rows = write_segments(segmenter.segments(chunks), segments_root,
                              task.recording_id, dtype="float32")
        result.segments = rows
        ...
        write_done_marker(segments_root, result, fingerprint)
        return result

    with lock_outputs(dest, segments_root):
        invalidate_outputs(dest)
        results = run_recordings(process, tasks, jobs=4)
        finalize_outputs(dest, segments_root, results, params, valid_percent=0.1, seed=0)
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import ForeignDirectoryError, InputError, OutputLockedError, OutputPathError  # noqa: F401  (re-exported)

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not locked
    fcntl = None

__all__ = [
    "DONE_MARKER",
    "ForeignDirectoryError",
    "InputError",
    "LOCK_FILE",
    "OWNER_MARKER",
    "OutputLock",
    "OutputLockedError",
    "OutputPathError",
    "STATUSES",
    "RecordingResult",
    "RecordingTask",
    "Segment",
    "Segmenter",
    "assign_splits",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_dir",
    "finalize_outputs",
    "fixed_splits",
    "invalidate_outputs",
    "load_done_marker",
    "lock_outputs",
    "make_recording_ids",
    "params_fingerprint",
    "plot_qc",
    "prepare_recording_dir",
    "qc_spectrum",
    "remove_recording_dir",
    "run_recordings",
    "summarize",
    "write_done_marker",
    "write_manifests",
    "write_report",
    "write_segments",
]

#: File name of the per-recording done marker inside ``SEGMENTS_ROOT/<recording_id>/``.
DONE_MARKER = "_done.json"
#: Ownership marker, written into every recording folder right after creating it: only
#: folders holding it (or an older version's done marker) are ever cleared.
OWNER_MARKER = "_owner.json"
#: Lock file of a run, in ``--dest`` and in the segments root (see :func:`lock_outputs`).
LOCK_FILE = ".make_manifest.lock"
_OWNER_TOOL = "meg2vec_fairseq make_manifest"
# Files the tool itself writes in a recording folder besides the markers: segments and
# hidden temp files (atomic writes, the z-scoring pass's stream file).
_OWN_FILE = re.compile(r"^(\d{6,}\.npy|\..+\.tmp)$")
#: Allowed values of :attr:`RecordingResult.status`.
STATUSES = ("ok", "skipped", "failed")
_TMP_SUFFIX = ".tmp"
_REPORT_VERSION = 1




# --------------------------------------------------------------------------- atomic I/O
def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort: not every OS/filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# fdatasync skips the metadata flush that fsync adds (the rename is flushed separately).
_datasync = getattr(os, "fdatasync", os.fsync)


def _tmp_path(path: Path) -> Path:
    # Hidden, unique per process, same directory (os.replace must not cross filesystems).
    return path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that ``path`` only ever exists complete.

    Parameters
    ----------
    path : path-like
        Destination; its parent directory must exist.
    data : bytes
        Content.
    fsync : bool
        Flush the file (and the directory entry) to disk before returning.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray, fsync: bool = True) -> None:
    """Save ``array`` as ``.npy`` at ``path`` atomically (temp file, fsync, rename).

    Parameters
    ----------
    path : path-like
        Destination ``.npy`` file; its parent directory must exist.
    array : ndarray
        Saved as is (cast it to the wanted dtype first).
    fsync : bool
        Flush to disk before the rename, so that a crash cannot leave a complete-looking
        but empty file.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            if fsync:
                _datasync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------ result record
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
    """One unit of work for :func:`run_recordings`.

    Attributes
    ----------
    recording_id : str
        See :func:`make_recording_ids`.
    source : str
        Input path (or any locator the input type understands).
    options : dict
        Input-type specific options (must be picklable for ``jobs > 1``).
    """

    recording_id: str
    source: str
    options: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)


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


# --------------------------------------------------------------------- done markers
def _write_owner_marker(rec_dir: Path, created: bool) -> None:
    payload = {"tool": _OWNER_TOOL, "recording_id": rec_dir.name, "created_folder": created}
    atomic_write_text(rec_dir / OWNER_MARKER, json.dumps(payload, sort_keys=True) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _ownership(rec_dir: Path) -> Optional[bool]:
    """Whether ``rec_dir`` is provably the tool's.

    Returns None when it is not, else whether the tool created the folder (and so may
    remove it). Proof: our ownership marker; or a done marker of this very recording (a
    folder of a version that wrote no ownership marker); an empty folder is adopted (no
    file can be lost) but never removed.
    """
    owner = _read_json(rec_dir / OWNER_MARKER)
    if isinstance(owner, dict) and owner.get("tool") == _OWNER_TOOL:
        return bool(owner.get("created_folder", True))
    done = _read_json(rec_dir / DONE_MARKER)
    if (isinstance(done, dict) and "fingerprint" in done and isinstance(done.get("result"), dict)
            and done["result"].get("recording_id") == rec_dir.name):
        return True
    if not any(rec_dir.iterdir()):
        return False
    return None


def _foreign_entries(rec_dir: Path) -> list[str]:
    """Names in ``rec_dir`` that the tool does not write (user files, sub-folders)."""
    return sorted(p.name for p in rec_dir.iterdir()
                  if p.is_dir() or p.is_symlink() or not (
                      p.name in (DONE_MARKER, OWNER_MARKER) or _OWN_FILE.match(p.name)))


def _remove_own_files(rec_dir: Path) -> None:
    # The done marker first: a half-cleared folder must never look done.
    (rec_dir / DONE_MARKER).unlink(missing_ok=True)
    for p in rec_dir.iterdir():
        if p.is_file() and not p.is_symlink() and _OWN_FILE.match(p.name):
            p.unlink(missing_ok=True)


def prepare_recording_dir(segments_root: str | os.PathLike, recording_id: str) -> Path:
    """Empty (create) ``SEGMENTS_ROOT/<recording_id>/`` before processing it from scratch.

    A new folder gets the ownership marker :data:`OWNER_MARKER` at once, before any
    segment. An existing folder is cleared only when it is provably the tool's (it holds
    that marker, or the done marker of this recording written by an older version, or
    is empty), and then only of the files the tool writes there: segments
    (``NNNNNN.npy``), hidden temp files (``.*.tmp``) and its markers. Whatever an
    interrupted or older run left is so removed; nothing else ever is.

    Raises
    ------
    ForeignDirectoryError
        The folder exists but is not the tool's (no marker, or a file or symlink), or it
        holds anything else (user files, sub-folders). Nothing is deleted.
    """
    rec_dir = Path(segments_root) / recording_id
    if not rec_dir.exists() and not rec_dir.is_symlink():
        rec_dir.mkdir(parents=True)
        _write_owner_marker(rec_dir, created=True)
        return rec_dir
    if rec_dir.is_symlink() or not rec_dir.is_dir():
        kind = "a symlink" if rec_dir.is_symlink() else "a file"
        raise ForeignDirectoryError(
            f"refusing to delete {rec_dir}: not created by make_manifest (it is {kind}); "
            f"move it out of {rec_dir.parent} and re-run")
    created = _ownership(rec_dir)
    if created is None:
        raise ForeignDirectoryError(
            f"refusing to delete {rec_dir}: not created by make_manifest (no {OWNER_MARKER}); "
            f"move it out of {rec_dir.parent} (or use another segments folder) and re-run")
    foreign = _foreign_entries(rec_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise ForeignDirectoryError(
            f"refusing to clear {rec_dir}: it holds files make_manifest did not write "
            f"({shown}); move them out and re-run")
    _write_owner_marker(rec_dir, created)  # before any deletion: the proof never lapses
    _remove_own_files(rec_dir)
    return rec_dir


def remove_recording_dir(segments_root: str | os.PathLike, recording_id: str) -> bool:
    """Remove what the tool wrote in ``SEGMENTS_ROOT/<recording_id>/`` (e.g. after a failure).

    Best effort, never raises: only a folder proven the tool's (see
    :func:`prepare_recording_dir`) is touched, only the tool's files are removed, and the
    folder itself only when the tool created it and nothing else is left in it.

    Returns
    -------
    removed : bool
        Whether the folder is gone.
    """
    rec_dir = Path(segments_root) / recording_id
    try:
        if rec_dir.is_symlink() or not rec_dir.is_dir():
            return not rec_dir.exists()
        created = _ownership(rec_dir)
        if created is None:
            return False
        _remove_own_files(rec_dir)
        if not created or _foreign_entries(rec_dir):
            return False  # keep the marker: the folder stays provably ours
        (rec_dir / OWNER_MARKER).unlink(missing_ok=True)
        rec_dir.rmdir()
        return True
    except OSError:
        return False


# ----------------------------------------------------------- output folders and lock
def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> None:
    """Fail early when ``path`` cannot be an output folder; creates nothing.

    Parameters
    ----------
    path : path-like
        The folder (it may not exist yet).
    what : str
        How to name it in the message, e.g. ``"--dest"``.

    Raises
    ------
    OutputPathError
        ``path`` exists and is not a directory, or its nearest existing ancestor is not a
        directory, or that folder is not writable.
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise OutputPathError(f"{what} {p}: exists and is not a directory")
        target = p
    else:
        target = p.absolute().parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise OutputPathError(f"{what} {p}: cannot be created, {target} is not a "
                                  "directory")
    if not os.access(target, os.W_OK | os.X_OK):
        where = "" if target == p else f" (cannot create it in {target})"
        raise OutputPathError(f"{what} {p}: not writable{where}")


# Lock file descriptors held by this process: worker processes close their inherited
# copies, so that a worker outliving a killed run never keeps the folders locked.
_HELD_LOCK_FDS: set[int] = set()


def _holder_text(lock_path: Path) -> str:
    """The holder's line from ``lock_path``, else from a lock file further up."""
    for folder in [lock_path.parent, *lock_path.parent.parents]:
        info = _read_json(folder / LOCK_FILE)
        if isinstance(info, dict) and info.get("pid"):
            return (f"pid {info['pid']} on {info.get('host', '?')}, started "
                    f"{info.get('started', '?')}, command: {info.get('command', '?')}")
    return "its details are not written yet"


class OutputLock:
    """Exclusive ``flock`` locks on a run's output folders (see :func:`lock_outputs`).

    The operating system releases them when the process ends, however it ends, so a killed
    run never leaves a folder locked. Usable as a context manager.
    """

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self._fds: list[tuple[int, bool]] = []

    def _acquire(self, folder: Path, info: Optional[bytes]) -> None:
        path = folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputPathError(f"{folder}: not writable ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputLockedError(
                f"{folder} is in use by another make_manifest run ({_holder_text(path)}); "
                "wait for it to end, or stop it") from None
        self._fds.append((fd, info is not None))
        self.paths.append(path)
        _HELD_LOCK_FDS.add(fd)
        if info is not None:  # for the message of a run that finds the folder locked
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)

    def release(self) -> None:
        """Unlock (idempotent); a lock file is kept (removing it would race other runs)."""
        while self._fds:
            fd, wrote = self._fds.pop()
            _HELD_LOCK_FDS.discard(fd)
            try:
                if wrote:
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                pass
            finally:
                os.close(fd)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_outputs(dest: str | os.PathLike, segments_root: str | os.PathLike | None = None,
                 command: Optional[str] = None) -> OutputLock:
    """Create ``dest`` (and ``segments_root``) and lock them for this run, or fail at once.

    Each folder gets a :data:`LOCK_FILE` locked with ``flock``; the holder's pid, host,
    start time and ``command`` are written into it for the message of a run that finds
    it locked. The segments root is always locked too, so that two runs with different
    ``dest`` but the same segments cannot meet; when it lies inside ``dest`` its lock file
    is never written (its holder is named by ``dest``'s), so that a run over finished
    output leaves the segments tree untouched. Worker processes of
    :func:`run_recordings` do not hold the locks.

    Parameters
    ----------
    dest : path-like
        Manifest folder.
    segments_root : path-like, optional
        Segments folder (default: ``dest/segments``).
    command : str, optional
        The command line to show (default: ``sys.argv``).

    Returns
    -------
    lock : OutputLock
        Call :meth:`OutputLock.release` (or use ``with``) when done; process exit does
        it too.

    Raises
    ------
    OutputLockedError
        Another run (or another lock in this process) holds one of the folders.
    OutputPathError
        A folder or its lock file cannot be created.
    """
    dest = Path(dest).absolute()
    root = Path(segments_root).absolute() if segments_root is not None else dest / "segments"
    lock = OutputLock()
    if fcntl is None:
        return lock
    info = json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command if command is not None else " ".join(sys.argv),
    }).encode("utf-8")
    folders = [(dest, info)]
    if root.resolve() != dest.resolve():
        inside = root.resolve().is_relative_to(dest.resolve())
        folders.append((root, None if inside else info))
    try:
        for folder, folder_info in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputPathError(f"{folder}: cannot be created ({err.strerror})") from None
            lock._acquire(folder, folder_info)
    except BaseException:
        lock.release()
        raise
    return lock


def invalidate_outputs(dest: str | os.PathLike) -> list[Path]:
    """Remove an earlier run's manifests and ``report.json`` from ``dest``.

    Call it before any segment is deleted or rewritten, so that no manifest ever lists
    files that are not there as it describes them; :func:`finalize_outputs` writes them
    again at the end. Removed: ``train.tsv``, ``valid.tsv`` and every ``<split>.tsv`` named
    in the old ``report.json`` (manifests first), then ``report.json``.

    Returns
    -------
    removed : list of Path
    """
    dest = Path(dest)
    report = _read_json(dest / "report.json")
    splits = {"train", "valid"}
    if isinstance(report, dict):
        splits.update(r["split"] for r in report.get("recordings", [])
                      if isinstance(r, dict) and isinstance(r.get("split"), str)
                      and re.fullmatch(r"\w[\w.-]*", r["split"]))
    removed = []
    for path in [dest / f"{name}.tsv" for name in sorted(splits)] + [dest / "report.json"]:
        if path.is_file():
            path.unlink()
            removed.append(path)
    if removed:
        _fsync_dir(dest)  # gone for good before any segment changes
    return removed


def write_done_marker(segments_root: str | os.PathLike, result: RecordingResult,
                      fingerprint: str) -> Path:
    """Mark a recording done; call only after all its segments are written.

    The marker holds the full :class:`RecordingResult` (segment list included) and the
    parameter ``fingerprint``; it is written atomically and fsynced.
    """
    path = Path(segments_root) / result.recording_id / DONE_MARKER
    payload = {"fingerprint": fingerprint, "result": result.to_dict()}
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path


def load_done_marker(segments_root: str | os.PathLike, recording_id: str,
                     fingerprint: str) -> Optional[RecordingResult]:
    """Return the result of an earlier complete run of this recording, or None.

    None unless the marker exists, parses, has the same ``fingerprint`` and every listed
    segment file exists. The returned result has status ``"skipped"``.
    """
    root = Path(segments_root)
    path = root / recording_id / DONE_MARKER
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if payload.get("fingerprint") != fingerprint:
        return None
    result = RecordingResult.from_dict(payload.get("result", {}))
    if result.status != "ok" or not all((root / rel).is_file() for rel, _ in result.segments):
        return None
    result.status = "skipped"
    result.reason = "already done by an earlier run (done marker found)"
    result.elapsed_s = 0.0
    return result


# ------------------------------------------------------------------------- segmenter
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
        _fsync_dir(root / recording_id)
    return rows


# ---------------------------------------------------------------------------- splits
def assign_splits(results: Sequence[RecordingResult], valid_percent: float, seed: int
                  ) -> dict[str, list[list]]:
    """Split segments into train/valid *by recording*, deterministically.

    Only recordings with status ok/skipped and at least one segment take part. With two
    or more, ``round(valid_percent * n)`` recordings (at least 1 when ``valid_percent >
    0``, at most ``n - 1``) chosen by a ``random.Random(seed)`` shuffle of the sorted ids
    go to valid. With exactly one recording, its last ``ceil(valid_percent * segments)``
    segments in time (at most all but one) go to valid.

    Returns
    -------
    splits : dict
        ``{"train": rows, "valid": rows}`` with ``[relative_path, num_samples]`` rows
        sorted by path.
    """
    if not 0.0 <= valid_percent < 1.0:
        raise ValueError(f"valid_percent must be in [0, 1), got {valid_percent}")
    usable = sorted((r for r in results if r.status in ("ok", "skipped") and r.segments),
                    key=lambda r: r.recording_id)
    splits: dict[str, list[list]] = {"train": [], "valid": []}
    if len(usable) == 1:
        segs = sorted(usable[0].segments, key=lambda row: row[0])  # names sort in time
        n_valid = math.ceil(valid_percent * len(segs)) if valid_percent > 0 else 0
        n_valid = min(n_valid, len(segs) - 1)
        cut = len(segs) - n_valid
        splits["train"], splits["valid"] = segs[:cut], segs[cut:]
    elif usable:
        ids = [r.recording_id for r in usable]
        random.Random(seed).shuffle(ids)
        n_valid = round(valid_percent * len(ids)) if valid_percent > 0 else 0
        n_valid = min(max(n_valid, 1 if valid_percent > 0 else 0), len(ids) - 1)
        valid_ids = set(ids[:n_valid])
        for r in usable:
            splits["valid" if r.recording_id in valid_ids else "train"].extend(r.segments)
    for rows in splits.values():
        rows.sort(key=lambda row: row[0])
    return splits


def fixed_splits(results: Sequence[RecordingResult], split_of: Mapping[str, str]
                 ) -> dict[str, list[list]]:
    """Split segments by a given ``recording_id -> split`` mapping (predefined partitions).

    Recordings with status ok/skipped go to ``split_of[recording_id]``; recordings not in
    the mapping are left out. ``"train"`` and ``"valid"`` are always present (possibly
    empty), as is every split named in ``split_of``; rows are sorted by path as in
    :func:`assign_splits`.
    """
    splits: dict[str, list[list]] = {"train": [], "valid": []}
    for name in split_of.values():
        splits.setdefault(name, [])
    for r in results:
        if r.status in ("ok", "skipped") and r.recording_id in split_of:
            splits[split_of[r.recording_id]].extend(r.segments)
    for rows in splits.values():
        rows.sort(key=lambda row: row[0])
    return splits


# ------------------------------------------------------------------- manifests/report
def write_manifests(dest: str | os.PathLike, segments_root: str | os.PathLike,
                    splits: Mapping[str, Sequence[Sequence]]) -> dict[str, Path]:
    """Write ``<split>.tsv`` in fairseq's format, atomically.

    First line: absolute ``segments_root``; then ``relative_path<TAB>num_samples`` rows in
    the given order (see :func:`assign_splits`). Returns ``{split: path}``.
    """
    dest = Path(dest)
    root = str(Path(segments_root).resolve())
    out = {}
    for name, rows in splits.items():
        lines = [root] + [f"{rel}\t{int(n)}" for rel, n in rows]
        path = dest / f"{name}.tsv"
        atomic_write_text(path, "\n".join(lines) + "\n")
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


# ------------------------------------------------------------------------------- QC
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


# -------------------------------------------------------------------------- finalize
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
    for stale in dest.glob(f".*{_TMP_SUFFIX}"):
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


# ---------------------------------------------------------------------------- runner
def _safe_call(fn: Callable[[RecordingTask], RecordingResult], task: RecordingTask
               ) -> RecordingResult:
    t0 = time.perf_counter()
    try:
        result = fn(task)
    except InputError as err:
        detail = str(err)
        result = RecordingResult.failed(task.recording_id, task.source, detail)
    except Exception as err:  # one bad recording never stops the others
        detail = f"{type(err).__name__}: {err}"
        result = RecordingResult.failed(task.recording_id, task.source, detail)
    if result.status == "ok" and not result.elapsed_s:
        result.elapsed_s = round(time.perf_counter() - t0, 3)
    return result


def _pool_context():
    # fork keeps already-imported modules (no re-import of heavy packages per worker).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _worker_init(parent_pid: int) -> None:
    """Set up a ``--jobs`` worker process.

    Ctrl-C reaches the whole process group: workers ignore it and the parent stops them,
    so that only the parent reports it. Inherited lock descriptors are closed (the parent
    keeps its locks), and a worker whose parent died exits instead of writing on.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _stop_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Stop the workers now (on Ctrl-C or an error in the parent), without waiting."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for proc in processes:
        try:
            proc.terminate()
        except (OSError, AttributeError):
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.join(timeout=5)


def run_recordings(fn: Callable[[RecordingTask], RecordingResult],
                   tasks: Sequence[RecordingTask], jobs: int = 1, progress: bool = True,
                   desc: str = "recordings") -> list[RecordingResult]:
    """Run ``fn`` over ``tasks`` with ``jobs`` worker processes; never raises per task.

    Parameters
    ----------
    fn : callable
        ``fn(task) -> RecordingResult``; a module-level function when ``jobs > 1``.
        An exception becomes a ``"failed"`` result whose reason is the exception text.
    tasks : sequence of RecordingTask
        Work items.
    jobs : int
        Worker processes; 1 runs in this process.
    progress : bool
        Show a tqdm progress bar (on stderr).
    desc : str
        Progress bar label.

    Returns
    -------
    results : list of RecordingResult
        In the order of ``tasks``.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="rec", disable=not progress, leave=True)
    results: list[Optional[RecordingResult]] = [None] * len(tasks)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i] = _safe_call(fn, task)
                bar.update(1)
        else:
            pool = cf.ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                                          mp_context=_pool_context(),
                                          initializer=_worker_init,
                                          initargs=(os.getpid(),))
            try:
                futures = {pool.submit(_safe_call, fn, t): i for i, t in enumerate(tasks)}
                for fut in cf.as_completed(futures):
                    i = futures[fut]
                    try:
                        results[i] = fut.result()
                    except Exception as err:  # e.g. a worker killed by the OOM killer
                        results[i] = RecordingResult.failed(
                            tasks[i].recording_id, tasks[i].source,
                            f"worker process died: {type(err).__name__}: {err}")
                    bar.update(1)
            except BaseException:  # Ctrl-C: stop the workers rather than wait for them
                _stop_pool(pool)
                raise
            pool.shutdown(wait=True)
    finally:
        bar.close()
    return [r for r in results if r is not None]
