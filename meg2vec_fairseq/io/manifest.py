"""The fairseq TSV manifest of segments: its one reader and its one writer.

A manifest is fairseq's audio manifest format::

    /absolute/root/dir
    relative/path/segment_000.npy<TAB>1250
    relative/path/segment_001.npy<TAB>1250
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Dict, List, Tuple

from ..cli import input_file_problem
from ..errors import MegDataError
from .atomic import atomic_write_text
from .segment_file import check_segment_header

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestRow:
    """One usable row of a manifest."""

    relative_path: str
    num_samples: int
    line_number: int


def read_manifest(
    manifest_path: str,
    expected_channels: int,
    min_sample_size: int = 0,
    check_files: bool = True,
) -> Tuple[str, List[ManifestRow], int]:
    """Parse and check a fairseq TSV manifest of MEG segments.

    Parameters
    ----------
    manifest_path : str
        The ``{split}.tsv`` file.
    expected_channels : int
        Channel count every segment must have.
    min_sample_size : int
        Rows shorter than this are skipped (counted, not an error), as in fairseq.
    check_files : bool
        Whether to check every segment's ``.npy`` header (cheap: a few hundred bytes each).

    Returns
    -------
    root : str
        The root directory (first line).
    rows : list of ManifestRow
        Rows kept.
    n_skipped : int
        Rows dropped for being shorter than ``min_sample_size``.

    Raises
    ------
    MegDataError
        For a missing or empty manifest, a malformed row, or a bad segment, naming the
        manifest, the line and the segment file.
    """
    problem = input_file_problem(manifest_path)
    if problem:
        raise MegDataError(f"{manifest_path}: manifest {problem}")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MegDataError(f"{manifest_path}: cannot read manifest ({err})") from None
    if not lines or not lines[0].strip():
        raise MegDataError(f"{manifest_path}: empty manifest (no root directory line)")
    root = lines[0].strip()
    rows: List[ManifestRow] = []
    first_seen: Dict[str, int] = {}
    n_skipped = 0
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{manifest_path}, line {line_number}"
        if len(fields) != 2:
            raise MegDataError(f"{where}: expected 'path<TAB>num_samples', got {line!r}")
        relative_path, length_text = fields
        try:
            num_samples = int(length_text)
        except ValueError:
            raise MegDataError(f"{where}: num_samples {length_text!r} is not an integer") from None
        if num_samples <= 0:
            raise MegDataError(f"{where}: num_samples must be positive, got {num_samples}")
        if min_sample_size and num_samples < min_sample_size:
            n_skipped += 1
            continue
        if check_files:
            try:
                check_segment_header(
                    os.path.join(root, relative_path), expected_channels, num_samples
                )
            except MegDataError as err:
                raise MegDataError(f"{where}: {err}") from None
        if relative_path in first_seen:  # legal, but sampled twice as often: say so
            logger.warning(
                f"warning: {where}: {relative_path} is listed again (first at line "
                f"{first_seen[relative_path]}); it will be read once per listing"
            )
        else:
            first_seen[relative_path] = line_number
        rows.append(ManifestRow(relative_path, num_samples, line_number))
    if not rows:
        if n_skipped:
            raise MegDataError(
                f"{manifest_path}: no usable segments ({n_skipped} shorter than "
                f"min_sample_size={min_sample_size})"
            )
        # make_manifest --valid-percent 0 writes a valid.tsv with the root line only
        raise MegDataError(
            f"{manifest_path}: empty manifest (no segment rows); to train without a "
            "validation set pass dataset.disable_validation=true"
            if os.path.basename(manifest_path).startswith("valid")
            else f"{manifest_path}: empty manifest (no segment rows)"
        )
    return root, rows, n_skipped


def write_manifest(path: str | os.PathLike, root: str | os.PathLike,
                   rows: Iterable[Sequence], fsync: bool = True) -> None:
    """Write a manifest atomically: ``root`` on the first line, then one row per segment.

    Parameters
    ----------
    path : path-like
        The ``{split}.tsv`` file (its folder must exist).
    root : path-like
        Folder the rows' paths are relative to, written as given.
    rows : iterable of (str, int)
        ``(relative_path, num_samples)`` in the order to write.
    fsync : bool
        See :func:`~meg2vec_fairseq.io.atomic.atomic_write_bytes`.
    """
    lines = [os.fspath(root)] + [f"{rel}\t{int(n)}" for rel, n in rows]
    atomic_write_text(path, "\n".join(lines) + "\n", fsync=fsync)
