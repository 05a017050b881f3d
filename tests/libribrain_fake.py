"""Generate a small fake LibriBrain tree in the layout pnpl 0.2.0 reads.

Layout (from /work/shared/libribrain/LAYOUT.md, written out here on purpose rather than taken
from pnpl, so a test catches a disagreement between our path handling and the real layout)::

    <root>/<task>/derivatives/serialised/sub-<S>_ses-<SES>_task-<task>_run-<R>_proc-<P>_meg.h5
    <root>/<task>/derivatives/events/sub-<S>_ses-<SES>_task-<task>_run-<R>_events.tsv

Each ``.h5`` has dataset ``data`` ``(306, T)`` float32 (chunks ``(306, 50)`` like pnpl's writer)
and root attribute ``sample_frequency``. Events files are optional (pnpl's windowed classes need
them; our tool does not).
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, Optional, Sequence, Tuple

import h5py
import numpy as np

RunKey = Tuple[str, str, str, str]

DEFAULT_PROC = "bads+headpos+sss+notch+bp+ds"
FIRST_TRAIN_KEY: RunKey = ("0", "1", "Sherlock1", "1")
VALIDATION_KEY: RunKey = ("0", "11", "Sherlock1", "2")
TEST_KEY: RunKey = ("0", "12", "Sherlock1", "2")
OTHER_TRAIN_KEY: RunKey = ("0", "2", "Sherlock1", "1")
#: Default runs: two training runs (incl. the first), the validation and the test run.
DEFAULT_KEYS: Tuple[RunKey, ...] = (FIRST_TRAIN_KEY, OTHER_TRAIN_KEY, VALIDATION_KEY, TEST_KEY)

# Data scale of real LibriBrain (tesla); values are ~1e-12, per-channel offsets differ by run.
SCALE = 1e-12


def h5_relpath(run_key: Sequence[str], proc: Optional[str] = DEFAULT_PROC) -> str:
    """Relative path of a run's ``.h5`` file in the layout."""
    sub, ses, task, run = run_key
    name = f"sub-{sub}_ses-{ses}_task-{task}_run-{run}"
    if proc is not None:
        name += f"_proc-{proc}"
    return os.path.join(task, "derivatives", "serialised", name + "_meg.h5")


def events_relpath(run_key: Sequence[str]) -> str:
    """Relative path of a run's events file in the layout."""
    sub, ses, task, run = run_key
    name = f"sub-{sub}_ses-{ses}_task-{task}_run-{run}_events.tsv"
    return os.path.join(task, "derivatives", "events", name)


def run_signal(run_key: Sequence[str], n_times: int, n_channels: int = 306) -> np.ndarray:
    """Deterministic float32 signal of one run: per-run channel offsets/scales + a few spikes."""
    seed = int.from_bytes("|".join(run_key).encode(), "little") % (2**32)
    rng = np.random.default_rng(seed)
    offset = rng.normal(0.0, 3.0, size=(n_channels, 1))
    scale = rng.uniform(0.5, 2.0, size=(n_channels, 1))
    x = offset + scale * rng.standard_normal((n_channels, n_times))
    # Large excursions (far beyond 10 standard deviations) so clipping has work to do.
    x[:3, n_times // 3] += 500.0
    x[3:6, n_times // 2] -= 500.0
    return (x * SCALE).astype(np.float32)


def write_run(
    path: str,
    data: Optional[np.ndarray],
    sfreq: Optional[float] = 250.0,
    chunks: Optional[Tuple[int, int]] = (306, 50),
    dataset_name: str = "data",
) -> None:
    """Write one ``.h5`` run file (``data=None`` writes a file without the dataset)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        if data is not None:
            c = chunks if chunks and data.shape[0] >= chunks[0] else None
            f.create_dataset(dataset_name, data=data, chunks=c)
            f.create_dataset("times", data=np.arange(data.shape[1]) / (sfreq or 250.0))
        if sfreq is not None:
            f.attrs["sample_frequency"] = float(sfreq)


def write_events(path: str, seconds: float) -> None:
    """A minimal events file pnpl's LibriBrainSpeech accepts (words and silences)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = ["kind\tsegment\ttimemeg\tduration\tsentenceidx\twordidx"]
    t = 0.0
    i = 0
    while t < seconds - 1.0:
        rows.append(f"word\tholmes\t{t:.3f}\t0.400\t0\t{i}")
        rows.append(f"silence\tsil\t{t + 0.4:.3f}\t0.100\t0\t{i}")
        t += 0.5
        i += 1
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")


def make_fake_libribrain(
    root: str,
    run_keys: Iterable[Sequence[str]] = DEFAULT_KEYS,
    seconds: float = 4.0,
    sfreq: float = 250.0,
    proc: Optional[str] = DEFAULT_PROC,
    events: bool = False,
    n_channels: int = 306,
) -> Dict[RunKey, str]:
    """Write a fake LibriBrain tree; return ``{run_key: h5 path}``.

    Parameters
    ----------
    root : str
        pnpl's ``data_path``.
    run_keys : iterable of run keys
        Runs to write (default: first training run, a second training run, validation, test).
    seconds : float
        Length of every run.
    sfreq : float
        ``sample_frequency`` attribute.
    proc : str or None
        pnpl's ``preprocessing_str`` in file names.
    events : bool
        Also write events files (needed only by pnpl's windowed dataset classes).
    n_channels : int
        Channels per run (306 for real data).
    """
    n_times = int(round(seconds * sfreq))
    out: Dict[RunKey, str] = {}
    for key in run_keys:
        key = tuple(map(str, key))
        path = os.path.join(root, h5_relpath(key, proc))
        write_run(path, run_signal(key, n_times, n_channels), sfreq)
        if events:
            write_events(os.path.join(root, events_relpath(key)), seconds)
        out[key] = path  # type: ignore[index]
    return out


def read_run(path: str) -> np.ndarray:
    """The whole ``data`` array of a fake run (tests only; runs are small)."""
    with h5py.File(path, "r") as f:
        return f["data"][:]
