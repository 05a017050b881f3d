"""Segment files: ``.npy`` header checks and the value check of a crop that was read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..cli import input_file_problem
from ..errors import MegDataError

#: The dtypes a segment may have.
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


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


def read_crop(
    path: str, start: int, length: int, max_abs_value: Optional[float], hint: str = ""
) -> Tuple[np.ndarray, Tuple[int, ...], Optional[str]]:
    """Read samples ``start:start + length`` of every channel of a segment and check them.

    Only those samples are read (memory map); the one reader of crops for training (the
    fairseq dataset) and for probing.

    Parameters
    ----------
    path : str
        The ``.npy`` segment, ``(channels, time)``.
    start, length : int
        First sample and number of samples (fewer come back at the segment's end).
    max_abs_value, hint
        As :func:`crop_value_problem`.

    Returns
    -------
    crop : ndarray, shape (channels, <= length), float32
        A copy, not a view of the memory map.
    shape : tuple of int
        The whole segment's shape.
    problem : str or None
        :func:`crop_value_problem` of the crop.

    Raises
    ------
    OSError, ValueError
        When NumPy cannot read the file.
    """
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    crop = np.array(array[..., start : start + length], dtype=np.float32)
    return crop, tuple(array.shape), crop_value_problem(crop, start, max_abs_value, hint=hint)


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
