"""Train/valid splits of the segments, by recording."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from .results import RecordingResult


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
