"""Dataset of ``(channels, time)`` MEG segments listed in a fairseq TSV manifest.

A manifest is fairseq's audio manifest format::

    /absolute/root/dir
    relative/path/segment_000.npy<TAB>1250
    relative/path/segment_001.npy<TAB>1250

Each ``.npy`` holds one ``(channels, time)`` float32 or float16 array. Everything that can
be checked without reading the samples (file exists, real ``.npy``, not an object array,
dtype, channel count, length, complete file) is checked when the manifest is loaded, so a
bad segment stops the run before any update; NaN/inf and absurd values (``|x| >
max_abs_value``) are checked on the crop that is actually read, before it reaches the model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data.audio.raw_audio_dataset import RawAudioDataset
from fairseq.data.data_utils import get_bucketed_sizes

from ..cli import input_file_problem
from ..errors import MegDataError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

#: Default bound on ``|x|`` of the task (``task.max_abs_value``). Segments are z-scored per
#: channel by ``make_manifest`` (and clipped to +-10 for LibriBrain), so real data lie within a
#: few tens of standard deviations; 1000 standard deviations is no physiological signal but a
#: unit error or a corrupt file, whose finite but huge values would otherwise overflow the
#: gradients (fairseq's "gradients are Nan/Inf", naming no file). Also well inside float16.
DEFAULT_MAX_ABS_VALUE = 1000.0


def crop_value_problem(
    crop: np.ndarray, start: int, max_abs_value: Optional[float], hint: str = ""
) -> Optional[str]:
    """What is wrong with the values of a ``(channels, n)`` crop, or None.

    One pass over the crop (NaN propagates through ``max`` and inf is infinite); the slower
    searches for the first bad sample run only for a bad crop.

    Parameters
    ----------
    crop : ndarray, shape (channels, n)
        The samples read.
    start : int
        Sample of the segment where the crop starts (for the message).
    max_abs_value : float or None
        Bound on ``|x|``; None or 0: no bound.
    hint : str
        Appended to the message of a value beyond the bound (how to relax it).
    """
    peak = float(np.max(np.abs(crop))) if crop.size else 0.0
    if not np.isfinite(peak):
        channels, samples = np.nonzero(~np.isfinite(crop))
        return (f"{len(channels)} NaN/inf values, first at channel {channels[0]}, sample "
                f"{start + samples[0]}")
    if max_abs_value and peak > max_abs_value:
        channels, samples = np.nonzero(np.abs(crop) > max_abs_value)
        return (f"{len(channels)} values beyond +-{max_abs_value:g} (largest |x| {peak:.3g}), "
                f"first at channel {channels[0]}, sample {start + samples[0]}"
                + (f"; {hint}" if hint else ""))
    return None




@dataclass(frozen=True)
class NpyHeader:
    """What the header of a ``.npy`` file says about its array."""

    shape: Tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int


def read_npy_header(path: str) -> NpyHeader:
    """Read the header of a ``.npy`` file without reading (or unpickling) its data.

    Parameters
    ----------
    path : str
        Path to the ``.npy`` file.

    Returns
    -------
    NpyHeader
        Shape, dtype, memory order and byte offset of the data.

    Raises
    ------
    MegDataError
        If the file is not a readable ``.npy`` file.
    """
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (OSError, ValueError, SyntaxError) as err:
        raise MegDataError(f"{path}: not a readable .npy file ({err})") from err
    return NpyHeader(tuple(shape), np.dtype(dtype), bool(fortran_order), offset)


def check_segment_header(path: str, expected_channels: int, expected_length: Optional[int]) -> None:
    """Check that a ``.npy`` segment can be memory-mapped as ``(channels, time)`` floats.

    Parameters
    ----------
    path : str
        The segment file.
    expected_channels : int
        Number of channels the model reads.
    expected_length : int or None
        Number of time samples the manifest claims, or None to skip that check.

    Raises
    ------
    MegDataError
        Naming ``path`` and what is wrong.
    """
    problem = input_file_problem(path)
    if problem:
        raise MegDataError(f"{path}: file {problem}")
    header = read_npy_header(path)
    if header.dtype.hasobject:
        raise MegDataError(
            f"{path}: holds a Python-object array (dtype {header.dtype}); segments must be "
            "float32 or float16 arrays (object arrays are never unpickled)"
        )
    if header.dtype not in SUPPORTED_DTYPES:
        raise MegDataError(f"{path}: dtype {header.dtype} is not float32 or float16")
    if len(header.shape) != 2:
        raise MegDataError(f"{path}: array of shape {header.shape}, expected (channels, time)")
    n_channels, n_samples = header.shape
    if n_channels != expected_channels:
        raise MegDataError(
            f"{path}: {n_channels} channels, but the model reads in_channels={expected_channels}"
        )
    if expected_length is not None and n_samples != expected_length:
        raise MegDataError(
            f"{path}: holds {n_samples} time samples, but the manifest says {expected_length}"
        )
    expected_bytes = header.data_offset + n_channels * n_samples * header.dtype.itemsize
    actual_bytes = os.path.getsize(path)
    if actual_bytes < expected_bytes:
        raise MegDataError(
            f"{path}: truncated file ({actual_bytes} bytes, header needs {expected_bytes})"
        )


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


class MegNpyDataset(RawAudioDataset):
    """fairseq dataset of MEG segments, read lazily by memory map.

    Reuses :class:`RawAudioDataset` for sizes, ordering, bucketing and cropping policy, and
    overrides only what ``(channels, time)`` input changes: reading, normalisation and
    collation.

    Parameters
    ----------
    manifest_path : str
        fairseq TSV manifest of ``.npy`` segments.
    sample_rate : int
        Sampling rate of the segments (recorded in the config; segments carry none).
    in_channels : int
        Channel count every segment must have.
    max_sample_size : int or None
        Longer segments are randomly cropped to this many time samples.
    min_sample_size : int
        Shorter segments are skipped.
    shuffle : bool
        Shuffle within size buckets (fairseq's ordering).
    pad : bool
        Pad a batch to its longest segment (with a padding mask) instead of cropping to
        its shortest.
    normalize : bool
        Z-score each channel of each crop over time.
    num_buckets : int
        Number of length buckets for padding (0: none).
    check_files : bool
        Check every segment's header when the manifest is loaded.
    max_abs_value : float or None
        A crop holding a value with ``|x|`` above this raises :class:`MegDataError` naming
        the file (None or 0: no check; the task's default is :data:`DEFAULT_MAX_ABS_VALUE`).
    """

    def __init__(
        self,
        manifest_path: str,
        sample_rate: int,
        in_channels: int,
        max_sample_size: Optional[int] = None,
        min_sample_size: int = 0,
        shuffle: bool = True,
        pad: bool = False,
        normalize: bool = False,
        num_buckets: int = 0,
        check_files: bool = True,
        max_abs_value: Optional[float] = None,
    ) -> None:
        if max_abs_value is not None and not (max_abs_value >= 0 and np.isfinite(max_abs_value)):
            raise MegDataError(f"max_abs_value must be a finite number >= 0, got {max_abs_value}")
        super().__init__(
            sample_rate=sample_rate,
            max_sample_size=max_sample_size,
            min_sample_size=min_sample_size,
            shuffle=shuffle,
            pad=pad,
            normalize=normalize,
        )
        self.manifest_path = manifest_path
        self.in_channels = in_channels
        self.max_abs_value = max_abs_value or None
        self.root_dir, rows, n_skipped = read_manifest(
            manifest_path, in_channels, min_sample_size or 0, check_files=check_files
        )
        self.relative_paths = [row.relative_path for row in rows]
        self.line_numbers = np.array([row.line_number for row in rows], dtype=np.int64)
        self.sizes = np.array([row.num_samples for row in rows], dtype=np.int64)
        logger.info(f"{manifest_path}: loaded {len(rows)} segments, skipped {n_skipped} short ones")
        self.set_bucket_info(num_buckets)

    def set_bucket_info(self, num_buckets: int) -> None:
        """Length buckets for padding, as fairseq's, but working with NumPy 2.

        fairseq's ``get_buckets`` passes ``np.percentile(interpolation=...)``, an argument
        NumPy 2 removed; ``method="lower"`` is the same computation.
        """
        self.num_buckets = num_buckets
        if num_buckets > 0:
            self._collated_sizes = np.minimum(self.sizes, self.max_sample_size)
            percentiles = np.linspace(0, 100, num_buckets + 1)
            self.buckets = np.unique(
                np.percentile(self._collated_sizes, percentiles, method="lower")[1:]
            )
            self._bucketed_sizes = get_bucketed_sizes(self._collated_sizes, self.buckets)
            logger.info(f"{len(self.buckets)} bucket(s) for the MEG dataset: {self.buckets}")

    def batch_by_size(
        self,
        indices: np.ndarray,
        max_tokens: Optional[int] = None,
        max_sentences: Optional[int] = None,
        required_batch_size_multiple: int = 1,
    ) -> List[np.ndarray]:
        """fairseq's batching, keeping the last batch even when it is not a full multiple.

        fairseq drops a final batch whose size is not a multiple of
        ``required_batch_size_multiple`` (8 by default in ``fairseq-validate``): segments
        would silently go unused, and a validation set of fewer than 8 segments would give
        no batch at all.
        """
        batches = list(
            super().batch_by_size(indices, max_tokens, max_sentences, required_batch_size_multiple)
        )
        n_batched = sum(len(batch) for batch in batches)
        if n_batched < len(indices):
            batches.append(np.asarray(indices[n_batched:], dtype=np.int64))
        return batches

    def segment_path(self, index: int) -> str:
        """Absolute path of segment ``index``."""
        return os.path.join(self.root_dir, self.relative_paths[index])

    def _where(self, index: int) -> str:
        return f"{self.manifest_path}, line {self.line_numbers[index]} ({self.segment_path(index)})"

    def read_crop(self, index: int, start: int, length: int) -> np.ndarray:
        """Read ``length`` samples from ``start`` of segment ``index`` as float32.

        Only the requested samples are read (memory map); NaN, inf or a value beyond
        ``max_abs_value`` raise a :class:`MegDataError` naming the manifest row and the file.
        """
        path = self.segment_path(index)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise MegDataError(f"{self._where(index)}: cannot read segment ({err})") from err
        crop = np.array(array[:, start : start + length], dtype=np.float32)  # a copy, not a view
        problem = crop_value_problem(
            crop, start, self.max_abs_value,
            hint="segments are expected z-scored (as make_manifest writes them): fix the file, "
            "or raise or disable (0) task.max_abs_value",
        )
        if problem:
            raise MegDataError(f"{self._where(index)}: {problem}")
        return crop

    def __getitem__(self, index: int) -> Dict[str, object]:
        size = int(self.sizes[index])
        length = min(size, self.max_sample_size)
        # Crop here (not in the collater) so only the needed samples are read from disk.
        start = np.random.randint(0, size - length + 1) if size > length else 0
        source = torch.from_numpy(self.read_crop(index, start, length))
        return {"id": index, "source": self.postprocess(source, self.sample_rate)}

    def postprocess(self, feats: torch.Tensor, curr_sample_rate: int) -> torch.Tensor:
        """Optionally z-score each channel over time (no averaging across channels)."""
        if self.normalize:
            mean = feats.mean(dim=-1, keepdim=True)
            std = feats.std(dim=-1, keepdim=True)
            # Zero (padded or flat) channels stay zero instead of becoming NaN.
            feats = (feats - mean) / std.clamp_min(1e-8)
        return feats

    def collater(self, samples: Sequence[Dict[str, object]]) -> Dict[str, object]:
        """Batch ``(C, T_i)`` sources into ``(B, C, T)`` with an optional ``(B, T)`` padding mask.

        Without padding, every source is randomly cropped to the shortest in the batch;
        with padding (``enable_padding``), shorter ones are zero-padded and masked.
        """
        samples = [s for s in samples if s["source"] is not None]
        if not samples:
            return {}
        sources = [s["source"] for s in samples]
        sizes = [source.size(-1) for source in sources]
        longest_or_shortest = max(sizes) if self.pad else min(sizes)
        target_size = min(longest_or_shortest, self.max_sample_size)

        collated = sources[0].new_zeros(len(sources), sources[0].size(0), target_size)
        padding_mask = torch.zeros(len(sources), target_size, dtype=torch.bool)
        for i, (source, size) in enumerate(zip(sources, sizes)):
            if size > target_size:
                start = np.random.randint(0, size - target_size + 1)
                collated[i] = source[:, start : start + target_size]
            else:
                collated[i, :, :size] = source
                padding_mask[i, size:] = True

        net_input: Dict[str, torch.Tensor] = {"source": collated}
        if self.pad:
            net_input["padding_mask"] = padding_mask
            if getattr(self, "num_buckets", 0) > 0:
                bucket = max(self._bucketed_sizes[s["id"]] for s in samples)
                num_pad = bucket - target_size
                if num_pad:
                    net_input["source"] = self._bucket_tensor(collated, num_pad, 0)
                    net_input["padding_mask"] = self._bucket_tensor(padding_mask, num_pad, True)
        return {"id": torch.LongTensor([s["id"] for s in samples]), "net_input": net_input}
