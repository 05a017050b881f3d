"""Reading an MNE recording: opening, completeness check, channel picks, annotations, chunks."""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import RecordingError


def is_bti(path: Path) -> bool:
    """Whether ``path`` is a BTi/4D data file (``c,rf*``)."""
    return path.is_file() and path.name.startswith("c,rf")


def bti_file(folder: Path) -> Optional[Path]:
    """The BTi/4D data file (``c,rf*``) of a folder, if any."""
    hits = sorted(p for p in folder.iterdir() if is_bti(p))
    return hits[0] if hits else None


def open_raw(path: str | os.PathLike):
    """Open a recording without loading its data (``preload=False``).

    Raises
    ------
    RecordingError
        Naming the file, when it does not exist or MNE cannot read it.
    """
    import mne

    path = Path(path)
    if not path.exists():
        raise RecordingError(f"{path}: path does not exist")
    if path.is_dir() and path.suffix.lower() != ".ds":
        bti = bti_file(path)
        if bti is None:
            raise RecordingError(f"{path}: is a directory but neither a CTF .ds folder nor "
                                 f"a BTi/4D folder (no c,rf* file)")
        path = bti
    try:
        if is_bti(path):
            return mne.io.read_raw_bti(path, preload=False, verbose="error")
        return mne.io.read_raw(path, preload=False, verbose="error")
    except Exception as err:
        raise RecordingError(f"{path}: cannot read recording (truncated or corrupt file?): "
                             f"{type(err).__name__}: {err}") from err


#: Bytes a FIF file may hold after its last data buffer (end tags, next-file reference,
#: tag directory of a long recording) before the data are taken as cut short.
_FIF_TAIL_SLACK = 1 << 16


def check_fif_complete(raw, path: str) -> None:
    """Fail when MNE's reading of a FIF file stops well before the file ends.

    A damaged tag header inside the data makes MNE end the recording there without a
    word (random bytes halfway through a file give half the recording). After the last
    data buffer a FIF file holds only end tags and small blocks, so more than
    ``max(64 KiB, 1 %)`` of the file past it means the rest was not read.
    """
    for extra in getattr(raw, "_raw_extras", []):  # one per split part; FIF only
        if not isinstance(extra, dict) or not extra.get("ent") or not extra.get("filename"):
            continue
        fname = extra["filename"]
        ends = [e.pos + 16 + e.size for e in extra["ent"] if e is not None]  # None: skip
        try:
            size = os.path.getsize(fname)
        except OSError:
            continue
        end = max(ends, default=size)
        if size - end > max(_FIF_TAIL_SLACK, size // 100):
            raise RecordingError(
                f"{path}: MNE reads data only up to byte {end} of {size} in {fname} "
                f"({raw.n_times / raw.info['sfreq']:.1f} s); the rest is unreadable "
                f"(damaged tag structure: truncated or corrupt file?)")


def system_name(raw, picks: Sequence[int]) -> str:
    from mne.io.constants import FIFF

    coils = {raw.info["chs"][i]["coil_type"] & 0xFFFF for i in picks}
    if coils & {FIFF.FIFFV_COIL_CTF_GRAD}:
        family = "ctf"
    elif coils & {FIFF.FIFFV_COIL_KIT_GRAD}:
        family = "kit"
    elif coils & {FIFF.FIFFV_COIL_MAGNES_MAG, FIFF.FIFFV_COIL_MAGNES_GRAD}:
        family = "bti"
    elif any(3000 <= c < 4000 for c in coils):
        family = "neuromag"
    else:
        family = "meg"
    return f"{family}{len(picks)}" if family == "neuromag" else family


def select_channels(info, n_channels: int, path: str = "") -> dict[str, Any]:
    """MEG data channels to use, and what was excluded.

    Magnetometers and gradiometers only: reference sensors (``ref_meg``) and
    ``info["bads"]`` are excluded; the rest, in file order, is truncated to
    ``n_channels`` (or padded later with zero rows).

    Returns
    -------
    sel : dict
        ``picks`` (indices into ``info``), ``names``, ``types``, ``policy``
        (``"exact"``/``"pad"``/``"truncate"``), ``output_names`` (``n_channels`` long,
        ``"PAD"`` for padding), ``excluded`` (``{"reference", "bads", "truncated"}``),
        ``n_meg``.

    Raises
    ------
    RecordingError
        When there is no usable MEG channel.
    """
    import mne

    meg = mne.pick_types(info, meg=True, ref_meg=False, exclude=[])
    refs = mne.pick_types(info, meg=False, ref_meg=True, exclude=[])
    names = info["ch_names"]
    if len(meg) == 0:
        kinds = sorted(set(info.get_channel_types()))
        raise RecordingError(f"{path}: no MEG channels (channel types present: "
                             f"{', '.join(kinds) or 'none'})")
    bads = [names[i] for i in meg if names[i] in info["bads"]]
    good = [i for i in meg if names[i] not in info["bads"]]
    if not good:
        raise RecordingError(f"{path}: all {len(meg)} MEG channels are marked bad")
    used, cut = good[:n_channels], good[n_channels:]
    policy = "exact" if len(good) == n_channels else ("pad" if len(good) < n_channels
                                                       else "truncate")
    used_names = [names[i] for i in used]
    return {
        "picks": used,
        "names": used_names,
        "types": info.get_channel_types(picks=used),
        "policy": policy,
        "output_names": used_names + ["PAD"] * (n_channels - len(used)),
        "excluded": {"reference": [names[i] for i in refs], "bads": bads,
                     "truncated": [names[i] for i in cut]},
        "n_meg": len(good),
    }


def bad_annotation_seconds(raw) -> dict[str, list[tuple[float, float]]]:
    """``BAD*`` annotations as ``(start, stop)`` seconds from the first sample."""
    spans: dict[str, list[tuple[float, float]]] = {"acquisition_skip": [],
                                                   "bad_annotation": []}
    ann = raw.annotations
    # Onsets are relative to meas_date (then they include first_samp) or to the data start.
    offset = raw.first_time if ann.orig_time is not None else 0.0
    for onset, duration, desc in zip(ann.onset, ann.duration, ann.description):
        if desc.lower().startswith("bad"):
            key = "acquisition_skip" if desc.upper() == "BAD_ACQ_SKIP" else "bad_annotation"
            spans[key].append((onset - offset, onset - offset + duration))
    return spans


def read_chunk(raw, picks: Sequence[int], start: int, stop: int) -> np.ndarray:
    """``raw.get_data`` for one chunk, naming the file when the data cannot be read."""
    if len(picks) == len(raw.ch_names) and list(picks) == list(range(len(picks))):
        picks = None  # every channel, in order: MNE's faster path without picking
    try:
        return raw.get_data(picks=picks, start=start, stop=stop)
    except Exception as err:
        fname = raw.filenames[0] if raw.filenames else "recording"
        raise RecordingError(
            f"{fname}: cannot read samples {start}-{stop} of {raw.n_times} (truncated or "
            f"corrupt file?): {type(err).__name__}: {err}") from err


def prefetched_chunks(raw, picks: Sequence[int], starts: Sequence[int], chunk: int
                ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, data)`` chunks, reading the next one in a thread meanwhile.

    Reading (file I/O, calibration) mostly releases the GIL, so it overlaps with the
    filtering of the previous chunk. At most two chunks are in memory.
    """
    n_in = raw.n_times
    starts = list(starts)
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(read_chunk, raw, picks, starts[0], min(starts[0] + chunk, n_in)) \
            if starts else None
        for i, start in enumerate(starts):
            x = nxt.result()
            if i + 1 < len(starts):
                s2 = starts[i + 1]
                nxt = pool.submit(read_chunk, raw, picks, s2, min(s2 + chunk, n_in))
            yield start, x

