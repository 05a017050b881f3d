"""Finding the MEG recordings MNE can read: files and folders under roots, or a BIDS dataset."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .mne_raw import bti_file
from .results import RecordingResult, make_recording_ids

#: Default discovery patterns (matched against file/folder names, recursively).
DEFAULT_PATTERNS = ("*.fif", "*.fif.gz", "*.ds", "*.sqd", "*.con", "c,rf*")
# FIF files that are not raw recordings (MNE naming conventions), skipped by discovery.
_NOT_RAW = re.compile(
    r"(-|_)(epo|ave|cov|fwd|inv|trans|ica|sol|proj|annot|bem|src|dip|morph|tfr|eve|"
    r"coh|csd|dense|head|fine-cal|ct_sparse)\.fif(\.gz)?$", re.IGNORECASE)
# Names MNE gives split continuation parts; only orders the header reads of
# split_continuations (whether a file is a part is read from the files themselves).
_NUMBERED_PART = re.compile(r"(-\d+\.fif(\.gz)?$)|(_split-\d+_)", re.IGNORECASE)

_BIDS_MEG_EXTENSIONS = (".fif", ".ds", ".sqd", ".con", ".bin")


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
                fpath.is_dir() and bti_file(fpath) is not None):
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

