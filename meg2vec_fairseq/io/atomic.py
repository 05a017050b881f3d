"""Atomic file writes: a file exists under its final name only when complete."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Suffix of the hidden temp files of atomic writes (``.<name>.<pid>.tmp``).
TMP_SUFFIX = ".tmp"


def fsync_dir(directory: str | os.PathLike) -> None:
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
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


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
        fsync_dir(path.parent)


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

