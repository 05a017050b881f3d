"""What the tools provably wrote: ownership and done markers, output folders and locks.

Only what the tool provably wrote is ever deleted (an ownership marker in every recording
folder it creates); a recording is *done* only when its marker matches the run's parameter
fingerprint and every segment it lists exists; one run at a time per output folder
(``flock``, released by the OS however the process ends).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import ForeignDirectoryError, OutputLockedError, OutputPathError
from ..io.atomic import atomic_write_text, fsync_dir
from .results import RecordingResult

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not locked
    fcntl = None

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


def close_inherited_locks() -> None:
    """Close this process's copies of the lock descriptors (in a forked worker).

    The parent keeps its locks; a worker outliving a killed run so never keeps the
    folders locked.
    """
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


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
        fsync_dir(dest)  # gone for good before any segment changes
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


