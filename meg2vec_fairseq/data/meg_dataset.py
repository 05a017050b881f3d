"""fairseq dataset of ``(channels, time)`` MEG segments listed in a TSV manifest.

The manifest format and the segment-file checks are fairseq-free
(:mod:`meg2vec_fairseq.io.manifest`, :mod:`meg2vec_fairseq.io.segment_file`): everything
that can be checked without reading the samples is checked when the manifest is loaded, so
a bad segment stops the run before any update; NaN/inf and absurd values (``|x| >
max_abs_value``) are checked on the crop that is actually read, before it reaches the model.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from fairseq.data.audio.raw_audio_dataset import RawAudioDataset
from fairseq.data.data_utils import get_bucketed_sizes

from ..errors import MegDataError
from ..features import zscore_channels
from ..io.manifest import read_manifest
from ..io.segment_file import read_crop

logger = logging.getLogger(__name__)




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
        the file (None or 0: no check; the task's default is :data:`MAX_ABS_VALUE`).
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
        try:
            crop, _shape, problem = read_crop(
                self.segment_path(index), start, length, self.max_abs_value,
                hint="segments are expected z-scored (as make_manifest writes them): fix the "
                "file, or raise or disable (0) task.max_abs_value",
            )
        except (OSError, ValueError) as err:
            raise MegDataError(f"{self._where(index)}: cannot read segment ({err})") from err
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
        return zscore_channels(feats) if self.normalize else feats

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
