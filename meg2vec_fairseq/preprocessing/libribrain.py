"""LibriBrain (as laid out and named by pnpl) -> segments and fairseq manifests.

pnpl owns everything it knows about LibriBrain: run keys, partitions, file naming and downloads.
This module only *calls* it:

* :func:`import_pnpl` is the single place pnpl is imported; it switches off pnpl's network fetch
  of remote constants and its ``.env`` loading first, so nothing touches the network unless a
  download is asked for.
* :func:`select_runs` turns partitions / explicit run keys / exclusions into the train and valid
  run lists, checked against pnpl's constants.
* :func:`make_resolver` gives pnpl's own path, download and HDF5 logic (its dataset mixins)
  without pnpl's dataset constructors, which need events files and build labelled windows;
  pre-training needs only the continuous ``data`` array of each run.
* :func:`iter_run_chunks` reads that array in bounded chunks; :class:`RunningStats` streams
  per-channel statistics; :class:`ChannelStats` is the standardise-then-clip transform saved
  beside the manifests (:func:`save_channel_stats` / :func:`load_channel_stats`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..constants import N_SENSORS
from ..errors import LibriBrainError
from .params import DATASETS, RunKey
from .stats import RunningStats, flat_channels

#: LibriBrain is recorded on a 306-channel MEGIN system (pnpl's ``n_channels``).
N_CHANNELS = N_SENSORS

#: Largest physically plausible |sample| (T or T/m; LibriBrain's HDF5 data are in SI
#: units). Brain signals are ~1e-13..1e-11 and the largest interference MEG sensors report
#: ~1e-9..1e-8, so anything above is corrupt (a flipped float exponent bit gives ~1e27):
#: such time samples are left out of the statistics and their segments are dropped
#: (``"implausible_amplitude"`` in the report). One bound for all 306 channels (the data
#: carry no channel types): the planar-gradiometer one of the ``raw`` input.
MAX_ABS = 1e-4


#: File written beside the manifests with the transform applied to every segment.
STATS_FILENAME = "channel_stats.npz"

# pnpl modules per dataset family: (module holding the run-key constants, base dataset class).
_FAMILY_MODULES = {
    "libribrain": (
        "pnpl.datasets.libribrain2025.constants",
        ("pnpl.datasets.libribrain2025.base", "LibriBrainBase"),
    ),
    "libribrain100": (
        "pnpl.datasets.libribrain100.manifest",
        ("pnpl.datasets.libribrain100.base", "LibriBrain100Base"),
    ),
}

# A run-key part is a BIDS entity value: letters and digits only (no separators, no paths).
_ENTITY_RE = re.compile(r"^[A-Za-z0-9]+$")




# --------------------------------------------------------------------------------------------
# pnpl import (offline-safe)
# --------------------------------------------------------------------------------------------


def import_pnpl(module: str = "pnpl") -> ModuleType:
    """Import a pnpl module with its import-time network access and ``.env`` loading off.

    pnpl fetches its LibriBrain constants from a URL on first use (30 s time-out when offline)
    unless ``PNPL_REMOTE_CONSTANTS_DISABLED=true``, and ``import pnpl`` loads a ``.env`` found
    upwards from the working directory unless ``PNPL_DISABLE_DOTENV=1``. Both are forced off
    here, always, so that run selection never depends on a remote file or a stray ``.env``
    (pnpl then uses its built-in constants, or a copy already cached under
    ``PNPL_CACHE_DIR``). Credentials for ``--download`` (``HF_TOKEN``) must be exported.

    Parameters
    ----------
    module : str
        Dotted module name under ``pnpl``.

    Returns
    -------
    ModuleType
        The imported module.

    Raises
    ------
    LibriBrainError
        If pnpl is not installed.
    """
    # Must happen before the first ``import pnpl`` (dotenv) and the first constants access
    # (remote fetch); pnpl reads both variables at those moments.
    os.environ["PNPL_REMOTE_CONSTANTS_DISABLED"] = "true"
    os.environ["PNPL_DISABLE_DOTENV"] = "1"
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name and err.name.split(".")[0] == "pnpl":
            raise LibriBrainError(
                "LibriBrain input needs pnpl: pip install --no-deps pnpl==0.2.0 "
                "(or pip install -e '.[libribrain]')"
            ) from err
        raise


def pnpl_default_preprocessing_str() -> Optional[str]:
    """pnpl's default ``preprocessing_str`` (the ``_proc-<P>`` part of file names).

    Returns
    -------
    str or None
        The default of ``LibriBrainBase(preprocessing_str=...)`` in the installed pnpl.
    """
    base = import_pnpl(_FAMILY_MODULES["libribrain"][1][0]).LibriBrainBase
    return inspect.signature(base.__init__).parameters["preprocessing_str"].default


# --------------------------------------------------------------------------------------------
# Run keys and selection
# --------------------------------------------------------------------------------------------


def parse_run_key(text: str) -> RunKey:
    """Parse ``"SUB,SES,TASK,RUN"`` (e.g. ``"0,1,Sherlock1,1"``) into a run key.

    Parameters
    ----------
    text : str
        Four comma-separated BIDS entity values (letters and digits).

    Returns
    -------
    tuple of str
        ``(subject, session, task, run)``.

    Raises
    ------
    LibriBrainError
        If the text is not four non-empty alphanumeric parts.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4 or not all(_ENTITY_RE.match(p) for p in parts):
        raise LibriBrainError(
            f"malformed run key {text!r}: expected SUB,SES,TASK,RUN with four alphanumeric "
            "parts, e.g. 0,1,Sherlock1,1"
        )
    return (parts[0], parts[1], parts[2], parts[3])


def format_run_key(run_key: Sequence[str]) -> str:
    """Format a run key as the command line takes it (``"0,1,Sherlock1,1"``)."""
    return ",".join(run_key)


def run_key_name(run_key: Sequence[str]) -> str:
    """BIDS-style name of a run, used for segment folders and report entries.

    Parameters
    ----------
    run_key : sequence of str
        ``(subject, session, task, run)``.

    Returns
    -------
    str
        ``sub-<S>_ses-<SES>_task-<T>_run-<R>``.
    """
    sub, ses, task, run = run_key
    return f"sub-{sub}_ses-{ses}_task-{task}_run-{run}"


@dataclass(frozen=True)
class DatasetFamily:
    """pnpl's run keys and partitions for one ``--dataset`` value."""

    name: str
    run_keys: Tuple[RunKey, ...]
    partitions: Dict[str, Tuple[RunKey, ...]]

    def partition_keys(self, partition: str) -> List[RunKey]:
        """Run keys of a named partition, in pnpl's order.

        Raises
        ------
        LibriBrainError
            If pnpl does not define that partition for this dataset.
        """
        if partition not in self.partitions:
            raise LibriBrainError(
                f"unknown {self.name} partition {partition!r}: pnpl defines "
                f"{', '.join(sorted(self.partitions))}"
            )
        return list(self.partitions[partition])


@functools.cache
def dataset_family(dataset: str = "libribrain") -> DatasetFamily:
    """Run keys and partitions of a dataset family, read from pnpl's constants.

    Parameters
    ----------
    dataset : {"libribrain", "libribrain100"}
        ``libribrain``: pnpl's LibriBrain (``pnpl.datasets.libribrain2025``: 86 runs of
        subject 0, Sherlock1-7). ``libribrain100``: pnpl's LibriBrain100 manifest (LibriBrain
        plus LibriBrain2), same on-disk layout.

    Returns
    -------
    DatasetFamily
    """
    if dataset not in _FAMILY_MODULES:
        raise LibriBrainError(f"unknown dataset {dataset!r}: choose from {', '.join(DATASETS)}")
    consts = import_pnpl(_FAMILY_MODULES[dataset][0])
    run_keys = tuple(tuple(map(str, k)) for k in consts.RUN_KEYS)
    valid = tuple(tuple(map(str, k)) for k in consts.VALIDATION_RUN_KEYS)
    test = tuple(tuple(map(str, k)) for k in consts.TEST_RUN_KEYS)
    if dataset == "libribrain":
        # pnpl's LibriBrain: train is "all run keys but validation and test"
        # (LibriBrainBase.__init__'s partition shortcut).
        held_out = set(valid) | set(test)
        train = tuple(k for k in run_keys if k not in held_out)
    else:
        train = tuple(r.run_key for r in consts.RUN_RECORDS if r.partition == "train")
    partitions = {"train": train, "validation": valid, "test": test}
    return DatasetFamily(dataset, run_keys, partitions)  # type: ignore[arg-type]


@dataclass
class RunSelection:
    """Which runs go to the train and the valid manifest."""

    train: List[RunKey]
    valid: List[RunKey]
    excluded: List[RunKey] = field(default_factory=list)
    unknown: List[RunKey] = field(default_factory=list)


def select_runs(
    dataset: str = "libribrain",
    train_partition: Optional[str] = "train",
    valid_partition: Optional[str] = "validation",
    train_run_keys: Optional[Sequence[RunKey]] = None,
    valid_run_keys: Optional[Sequence[RunKey]] = None,
    exclude_run_keys: Optional[Sequence[RunKey]] = None,
) -> RunSelection:
    """Resolve partitions, explicit run keys and exclusions into train/valid run lists.

    Explicit run keys override the partition of their side, as the seed's
    ``libribrain_include_run_keys_train`` / ``_eval`` do. Exclusions apply to both sides.

    Parameters
    ----------
    dataset : str
        ``libribrain`` or ``libribrain100`` (see :func:`dataset_family`).
    train_partition, valid_partition : str or None
        pnpl partition names (``train``, ``validation``, ``test``); ``None`` selects nothing.
    train_run_keys, valid_run_keys : sequence of run keys, optional
        If given (non-empty), used instead of the partition of that side. Keys outside pnpl's
        list are accepted, as pnpl's ``include_run_keys`` does, and reported in ``unknown``.
    exclude_run_keys : sequence of run keys, optional
        Removed from both sides.

    Returns
    -------
    RunSelection

    Raises
    ------
    LibriBrainError
        Unknown partition, a run key in both train and valid, or an empty train selection.
    """
    family = dataset_family(dataset)
    known = set(family.run_keys)

    def side(partition: Optional[str], keys: Optional[Sequence[RunKey]]) -> List[RunKey]:
        if keys:
            return list(dict.fromkeys(tuple(map(str, k)) for k in keys))
        return family.partition_keys(partition) if partition else []

    train = side(train_partition, train_run_keys)
    valid = side(valid_partition, valid_run_keys)
    excluded = [tuple(map(str, k)) for k in (exclude_run_keys or [])]
    unused = [k for k in excluded if k not in train and k not in valid]
    if unused:
        warnings.warn(
            "excluded run keys not in the selection: "
            + "; ".join(format_run_key(k) for k in unused),
            stacklevel=2,
        )
    train = [k for k in train if k not in excluded]
    valid = [k for k in valid if k not in excluded]
    both = [k for k in train if k in valid]
    if both:
        raise LibriBrainError(
            "run keys selected for both train and valid (statistics and evaluation would "
            "leak): " + "; ".join(format_run_key(k) for k in both)
        )
    if not train:
        raise LibriBrainError("no training runs selected (check partitions and exclusions)")
    unknown = [k for k in train + valid if k not in known]
    if unknown:
        warnings.warn(
            f"run keys not in pnpl's {dataset} list (processed anyway): "
            + "; ".join(format_run_key(k) for k in unknown),
            stacklevel=2,
        )
    return RunSelection(train=train, valid=valid, excluded=excluded, unknown=unknown)


# --------------------------------------------------------------------------------------------
# pnpl paths, downloads and HDF5 access
# --------------------------------------------------------------------------------------------


@functools.cache
def _resolver_class(dataset: str) -> type:
    module, name = _FAMILY_MODULES[dataset][1]
    base = getattr(import_pnpl(module), name)

    class Resolver(base):  # type: ignore[misc, valid-type]
        """pnpl's path, download and HDF5 mixins without its dataset constructor.

        pnpl's constructors need events files, build labelled windows and open every run; we
        need only ``get_h5_path``, ``ensure_file`` and ``get_h5_dataset``. They read exactly the
        attributes set here (plus ``_fpath_to_record`` for LibriBrain100's per-file repo).
        """

        def __init__(self, data_path: str, preprocessing_str: Optional[str], download: bool):
            self.data_path = data_path
            self.preprocessing = self.preprocessing_str = preprocessing_str
            self.download = download
            self._fpath_to_record = {}
            self.init_continuous_h5(preload_h5=False)

    Resolver.__name__ = Resolver.__qualname__ = f"{name}Resolver"
    return Resolver


def make_resolver(
    data_path: str,
    dataset: str = "libribrain",
    preprocessing_str: Optional[str] = None,
    download: bool = False,
):
    """pnpl's file naming, downloading and HDF5 opening for one data directory.

    Parameters
    ----------
    data_path : str
        pnpl's ``data_path`` (the directory holding ``Sherlock1/`` ...).
    dataset : str
        ``libribrain`` or ``libribrain100``.
    preprocessing_str : str or None
        The ``_proc-<P>`` part of file names; ``None`` means none (pnpl's convention).
    download : bool
        Whether ``ensure_file`` may download through pnpl.

    Returns
    -------
    object
        An object with pnpl's ``get_h5_path(sub, ses, task, run)``, ``ensure_file(path)``,
        ``get_h5_dataset(run_key)`` and ``close_h5_files()``. Not picklable once a file is open:
        make one per process.
    """
    if dataset not in _FAMILY_MODULES:
        raise LibriBrainError(f"unknown dataset {dataset!r}: choose from {', '.join(DATASETS)}")
    return _resolver_class(dataset)(str(data_path), preprocessing_str, download)


def h5_path(resolver, run_key: RunKey) -> str:
    """pnpl's expected path of a run's HDF5 file (whether or not it exists)."""
    return resolver.get_h5_path(*run_key)


@dataclass
class LocatedRuns:
    """Outcome of :func:`locate_runs`: paths of runs present, errors of the others."""

    paths: Dict[RunKey, str]
    errors: Dict[RunKey, str]


def locate_runs(resolver, run_keys: Sequence[RunKey], progress: bool = True) -> LocatedRuns:
    """Find each run's HDF5 file; download missing ones through pnpl if the resolver may.

    With downloads off a missing file is reported at once (run key and expected path), never
    after retries. A failed download is an error for that run only.

    Parameters
    ----------
    resolver : object
        From :func:`make_resolver`.
    run_keys : sequence of run keys
    progress : bool
        Show a progress bar over the downloads (pnpl/huggingface_hub show per-file bars).

    Returns
    -------
    LocatedRuns
    """
    paths: Dict[RunKey, str] = {}
    errors: Dict[RunKey, str] = {}
    missing: List[Tuple[RunKey, str]] = []
    for key in run_keys:
        path = h5_path(resolver, key)
        if os.path.isfile(path):
            paths[key] = path
        elif resolver.download:
            missing.append((key, path))
        else:
            errors[key] = (
                f"run {format_run_key(key)}: file not found: {path} "
                "(downloads are off; pass download=True to fetch it through pnpl)"
            )
    if missing:
        bar = _progress(missing, desc="downloading LibriBrain runs", enabled=progress)
        for key, path in bar:
            try:
                got = resolver.ensure_file(path)
            except Exception as err:  # pnpl/huggingface_hub raise many kinds
                errors[key] = f"run {format_run_key(key)}: download of {path} failed: " + (
                    f"{type(err).__name__}: {err}"
                )
                continue
            if not os.path.isfile(got):
                errors[key] = f"run {format_run_key(key)}: download gave no file at {path}"
                continue
            paths[key] = got
    return LocatedRuns(paths=paths, errors=errors)


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: plain iteration
        return items
    return tqdm(items, desc=desc, unit="run")


@dataclass(frozen=True)
class RunInfo:
    """What :func:`check_run` learnt about a run's continuous data."""

    run_key: RunKey
    path: str
    n_channels: int
    n_times: int
    sfreq: float


def check_run(path: str, run_key: RunKey, segment_seconds: float = 0.0) -> RunInfo:
    """Check a run's HDF5 file as pnpl reads it: dataset ``data`` and ``sample_frequency``.

    Parameters
    ----------
    path : str
        The run's ``.h5`` file.
    run_key : run key
        Named in errors.
    segment_seconds : float
        The run must hold at least one segment of this length.

    Returns
    -------
    RunInfo

    Raises
    ------
    LibriBrainError
        Unreadable file, no ``data`` dataset, not ``(306, T)`` floats, no/invalid
        ``sample_frequency``, or fewer than ``min_samples`` samples.
    """
    import h5py

    where = f"run {format_run_key(run_key)} ({path})"
    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            if not isinstance(data, h5py.Dataset):
                raise LibriBrainError(f"{where}: no 'data' dataset (pnpl reads MEG from 'data')")
            shape, kind = data.shape, data.dtype.kind
            sfreq = f.attrs.get("sample_frequency")
    except OSError as err:
        raise LibriBrainError(f"{where}: not a readable HDF5 file ({err})") from err
    if len(shape) != 2 or kind != "f":
        raise LibriBrainError(f"{where}: 'data' must be a 2-D float array, got {shape} {kind}")
    if shape[0] != N_CHANNELS:
        raise LibriBrainError(
            f"{where}: 'data' has {shape[0]} channels, expected {N_CHANNELS} (channels, time)"
        )
    try:
        sfreq = float(np.asarray(sfreq).item())
    except (TypeError, ValueError):
        sfreq = float("nan")
    if not np.isfinite(sfreq) or sfreq <= 0:
        raise LibriBrainError(f"{where}: missing or invalid root attribute 'sample_frequency'")
    min_samples = max(1, int(round(segment_seconds * sfreq)))
    if shape[1] < min_samples:
        raise LibriBrainError(
            f"{where}: {shape[1]} samples ({shape[1] / sfreq:.2f} s) is shorter than one "
            f"segment ({min_samples} samples)"
        )
    return RunInfo(run_key, path, shape[0], shape[1], sfreq)


def iter_run_chunks(
    resolver, run_key: RunKey, chunk_samples: int, stop: Optional[int] = None
) -> Iterator[np.ndarray]:
    """Yield a run's continuous ``data`` as ``(306, <=chunk_samples)`` float32 slices.

    Reads through pnpl's ``get_h5_dataset`` (lazy h5py dataset), so memory is bounded by
    ``chunk_samples``, not run length. The file handle is closed when iteration ends.

    Parameters
    ----------
    resolver : object
        From :func:`make_resolver` (one per process).
    run_key : run key
    chunk_samples : int
        Time samples per slice.
    stop : int, optional
        Read only the first ``stop`` samples.
    """
    try:
        data = resolver.get_h5_dataset(tuple(run_key))
        end = data.shape[1] if stop is None else min(stop, data.shape[1])
        for start in range(0, end, chunk_samples):
            yield np.asarray(data[:, start : min(start + chunk_samples, end)], dtype=np.float32)
    finally:
        resolver.close_h5_files()


# --------------------------------------------------------------------------------------------
# Streamed statistics and the standardise-then-clip transform
# --------------------------------------------------------------------------------------------


def run_statistics(
    resolver, run_key: RunKey, chunk_samples: int, use_cached: bool = True
) -> RunningStats:
    """Stream one run's per-channel statistics (never loading the whole run).

    Parameters
    ----------
    resolver : object
        From :func:`make_resolver`.
    run_key : run key
    chunk_samples : int
        Time samples read at a time.
    use_cached : bool
        Use the ``channel_means`` / ``channel_stds`` attributes of ``data`` when present, as
        pnpl does (its standardisation writes them back to the file), instead of reading the
        run.

    Returns
    -------
    RunningStats
    """
    if use_cached:
        cached = _cached_run_stats(resolver, run_key)
        if cached is not None:
            return cached
    stats = RunningStats()
    for chunk in iter_run_chunks(resolver, run_key, chunk_samples):
        implausible = implausible_samples(chunk)
        stats.update(chunk[:, ~implausible] if implausible.any() else chunk)
    return stats


def implausible_samples(chunk: np.ndarray) -> np.ndarray:
    """Time samples where some channel exceeds :data:`MAX_ABS` (NaN is not counted:
    NaN in training runs is reported as non-finite statistics)."""
    with np.errstate(invalid="ignore"):
        return (np.abs(chunk) > MAX_ABS).any(axis=0)


def _cached_run_stats(resolver, run_key: RunKey) -> Optional[RunningStats]:
    try:
        data = resolver.get_h5_dataset(tuple(run_key))
        attrs = data.attrs
        if "channel_means" not in attrs or "channel_stds" not in attrs:
            return None
        n = int(data.shape[1])
        mean = np.asarray(attrs["channel_means"], np.float64).reshape(-1)
        std = np.asarray(attrs["channel_stds"], np.float64).reshape(-1)
    finally:
        resolver.close_h5_files()
    if mean.shape != (data.shape[0],) or std.shape != mean.shape:
        return None  # malformed cache: recompute rather than trust it
    return RunningStats(n, mean, std**2 * n)


@dataclass
class ChannelStats:
    """The per-channel transform applied to every segment, saved beside the manifests.

    ``x -> clip((x - means) / stds, -clip, clip)`` per channel; with ``standardize`` false only
    the clip (if any) is applied, as pnpl does.
    """

    means: np.ndarray
    stds: np.ndarray
    standardize: bool = True
    clip: Optional[float] = 10.0
    run_keys: List[RunKey] = field(default_factory=list)
    n_samples: int = 0
    sfreq: float = 0.0
    dataset: str = "libribrain"
    preprocessing_str: Optional[str] = None
    zero_std_channels: List[int] = field(default_factory=list)

    @classmethod
    def from_running(cls, stats: RunningStats, **kwargs) -> ChannelStats:
        """Build from pooled :class:`RunningStats`; flat channels get std 1 (and are listed)."""
        flat = flat_channels(stats.std)
        # A flat channel would divide by zero (inf/NaN through the clip); leave it centred.
        stds = np.where(flat, 1.0, stats.std)
        return cls(means=stats.mean, stds=stds, n_samples=stats.n,
                   zero_std_channels=np.flatnonzero(flat).tolist(), **kwargs)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Standardise (if enabled) then clip (if set) a ``(channels, time)`` array.

        Returns
        -------
        numpy.ndarray
            float32 array of the same shape.
        """
        x = np.asarray(x, dtype=np.float32)
        if self.standardize:
            x = (x - self.means.astype(np.float32)[:, None]) / self.stds.astype(np.float32)[:, None]
        if self.clip is not None:
            x = np.clip(x, -self.clip, self.clip)
        return x

    def to_json(self) -> dict:
        """Everything but the arrays, as JSON-able values."""
        return {
            "standardize": self.standardize,
            "clip": self.clip,
            "run_keys": [list(k) for k in self.run_keys],
            "n_samples": self.n_samples,
            "sfreq": self.sfreq,
            "dataset": self.dataset,
            "preprocessing_str": self.preprocessing_str,
            "zero_std_channels": self.zero_std_channels,
        }


def save_channel_stats(stats: ChannelStats, dest_dir: str) -> str:
    """Write ``channel_stats.npz`` atomically into the manifest directory.

    Parameters
    ----------
    stats : ChannelStats
    dest_dir : str
        The manifest directory.

    Returns
    -------
    str
        Path written. Arrays ``means``, ``stds`` (float64, ``(306,)``) and ``meta`` (a JSON
        string: standardize, clip, training run keys, sample count, sfreq, dataset, ...).
    """
    path = os.path.join(dest_dir, STATS_FILENAME)
    fd, tmp = tempfile.mkstemp(prefix=".channel_stats.", suffix=".npz", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                means=np.asarray(stats.means, np.float64),
                stds=np.asarray(stats.stds, np.float64),
                meta=np.asarray(json.dumps(stats.to_json())),
            )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_channel_stats(path: str) -> ChannelStats:
    """Load the transform written by :func:`save_channel_stats`.

    Use it to apply exactly the pre-training transform in feature extraction and probing::

        stats = load_channel_stats("manifests/libribrain")
        x = stats.apply(raw_window)          # (306, n) -> standardised, clipped float32

    Parameters
    ----------
    path : str
        The manifest directory or the ``channel_stats.npz`` file itself.

    Returns
    -------
    ChannelStats
    """
    if os.path.isdir(path):
        path = os.path.join(path, STATS_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no channel statistics at {path}")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        means, stds = z["means"], z["stds"]
    return ChannelStats(
        means=means,
        stds=stds,
        standardize=bool(meta["standardize"]),
        clip=meta["clip"],
        run_keys=[tuple(k) for k in meta["run_keys"]],
        n_samples=int(meta["n_samples"]),
        sfreq=float(meta["sfreq"]),
        dataset=meta["dataset"],
        preprocessing_str=meta["preprocessing_str"],
        zero_std_channels=list(meta["zero_std_channels"]),
    )



def channel_names(path: str) -> List[str]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names = f.attrs.get("channel_names")
    except OSError:
        return []
    if isinstance(names, bytes):
        names = names.decode()
    names = [n.strip() for n in str(names).split(",")] if isinstance(names, str) else []
    return names if len(names) == N_CHANNELS else []
