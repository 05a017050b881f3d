"""The ``meg_pretraining`` task: fairseq's audio pre-training task over MEG ``.npy`` manifests.

Bad data (:class:`~meg2vec_fairseq.data.meg_dataset.MegDataError`, found when a manifest
is loaded or when a crop is read) ends fairseq's commands with one line ``error: ...`` naming
the manifest, the row and the file, and exit status 1, instead of a traceback: the task
raises :class:`MegDataExit`, a ``SystemExit`` (which fairseq and hydra let through, and
Python prints as its message alone) whose ``__cause__`` is the original error.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from fairseq.data import iterators
from fairseq.tasks import register_task
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask

from ..constants import MAX_ABS_VALUE, N_SENSORS, SFREQ
from ..data.meg_dataset import WIRE_DTYPES, MegDataError, MegNpyDataset


class MegDataExit(SystemExit):
    """``SystemExit("error: ...")`` for bad data met under a fairseq command (status 1)."""


def data_exit(err: BaseException) -> MegDataExit:
    """The :class:`MegDataExit` for ``err``, with the one-line message of the original error.

    An error raised in a DataLoader worker reaches the main process re-created from a message
    that embeds the worker's traceback; its last line holds the original message.
    """
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:
        text = text.splitlines()[-1].split("MegDataError: ", 1)[-1]
    line = text.splitlines()[0] if text else type(err).__name__
    return MegDataExit(f"error: {line}")


class _TranslatingIterator:
    """Wraps a batch iterator so that :class:`MegDataError` becomes :class:`MegDataExit`."""

    def __init__(self, itr: Iterator) -> None:
        self._itr = itr

    def __iter__(self) -> "_TranslatingIterator":
        return self

    def __next__(self):
        try:
            return next(self._itr)
        except MegDataError as err:
            raise data_exit(err) from err

    def __getattr__(self, name: str):  # take(), len, ... of the wrapped iterator
        return getattr(self._itr, name)


@dataclass
class MegPretrainingConfig(AudioPretrainingConfig):
    """:class:`AudioPretrainingConfig` with MEG defaults and the sensor count."""

    sample_rate: int = field(
        default=int(SFREQ),
        metadata={
            "help": "sampling rate (Hz) of the .npy segments; they carry none themselves, so "
            "this records it with the checkpoint (LibriBrain and make_manifest default: 250)"
        },
    )
    in_channels: int = field(
        default=N_SENSORS,
        metadata={"help": "number of MEG channels in every segment (and the model's input)"},
    )
    normalize: bool = field(
        default=False,
        metadata={"help": "z-score each channel of each training crop over time"},
    )
    check_files: bool = field(
        default=True,
        metadata={
            "help": "check every segment's .npy header (exists, dtype, channels, length, "
            "complete) when a manifest is loaded, before training starts"
        },
    )
    max_abs_value: Optional[float] = field(
        default=MAX_ABS_VALUE,
        metadata={
            "help": "stop with an error naming the file when a crop read for training holds a "
            "value with |x| above this (segments are z-scored by make_manifest, so real data "
            "stay within a few tens; absurd values would overflow the gradients); 0 or null "
            "disables the check"
        },
    )
    wire_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the batches from the data-loader workers to the device: float32, "
            "or float16 to move half the bytes (worker -> main process -> pinned memory -> "
            "device); crops are checked and normalized in float32, cast once in the worker, "
            "and cast to the model's dtype on the device. float16 holds +-65504 with an 11-bit "
            "significand (about 3 decimal digits)"
        },
    )
    persistent_workers: bool = field(
        default=True,
        metadata={
            "help": "keep the data loader's worker processes alive between epochs "
            "(fairseq's FairseqTask.get_batch_iterator reads this field of the task config)"
        },
    )


@register_task("meg_pretraining", dataclass=MegPretrainingConfig)
class MegPretrainingTask(AudioPretrainingTask):
    """Self-supervised pre-training on ``(channels, time)`` MEG segments.

    Reads ``{data}/{split}.tsv`` manifests (fairseq's format) of ``.npy`` segments with
    :class:`~meg2vec_fairseq.data.MegNpyDataset`; everything else (batching by
    ``max_tokens``, bucketing, model building, checkpoints) is fairseq's audio task.
    """

    cfg: MegPretrainingConfig
    #: the extra losses of the model :meth:`build_model` built (None: none built yet, or a
    #: model that does not list them)
    _extra_loss_names: Optional[List[str]] = None

    def build_model(self, model_cfg, from_checkpoint: bool = False):
        """fairseq's model building; remembers the model's extra losses for
        :meth:`build_criterion`."""
        model = super().build_model(model_cfg, from_checkpoint)
        names = getattr(model, "extra_loss_names", None)
        self._extra_loss_names = names() if names is not None else None
        return model

    def build_criterion(self, cfg, from_checkpoint: bool = False):
        """fairseq's criterion, after checking that ``criterion.loss_weights`` has one
        weight per extra loss of the model built by :meth:`build_model` (or a single weight,
        which fairseq applies to all).

        Raises
        ------
        ValueError
            When the counts differ: fairseq would only fail at the first update, with a
            bare assertion.
        """
        check_loss_weights(getattr(cfg, "loss_weights", None), self._extra_loss_names)
        return super().build_criterion(cfg, from_checkpoint)

    def load_dataset(
        self, split: str, task_cfg: Optional[MegPretrainingConfig] = None, **kwargs
    ) -> None:
        """Load ``{data}/{split}.tsv`` as a :class:`MegNpyDataset`.

        Raises
        ------
        MegDataExit
            For an unsupported option, or a manifest or segment that cannot be used.
        """
        task_cfg = task_cfg or self.cfg
        try:
            for unsupported in ("binarized_dataset", "multi_corpus_keys", "labels"):
                if getattr(task_cfg, unsupported, None):
                    raise MegDataError(f"meg_pretraining does not support task.{unsupported}")
            if getattr(task_cfg, "precompute_mask_config", None) is not None:
                raise MegDataError("meg_pretraining does not support task.precompute_mask_config")
            wire_dtype = getattr(task_cfg, "wire_dtype", None) or "float32"  # older checkpoints
            if wire_dtype not in WIRE_DTYPES:
                raise MegDataError(
                    f"task.wire_dtype={wire_dtype} is not supported: use "
                    f"{' or '.join(WIRE_DTYPES)}"
                )

            manifest_path = os.path.join(self.cfg.data, f"{split}.tsv")
            self.datasets[split] = MegNpyDataset(
                manifest_path=manifest_path,
                sample_rate=task_cfg.sample_rate,
                in_channels=task_cfg.in_channels,
                max_sample_size=self.cfg.max_sample_size,
                min_sample_size=self.cfg.min_sample_size,
                pad=task_cfg.enable_padding,
                normalize=task_cfg.normalize,
                num_buckets=self.cfg.num_batch_buckets,
                check_files=task_cfg.check_files,
                max_abs_value=getattr(task_cfg, "max_abs_value", MAX_ABS_VALUE),
                wire_dtype=wire_dtype,
            )
        except MegDataError as err:
            raise data_exit(err) from err

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """fairseq's train step, ``source`` first cast to the model's dtype if it differs.

        See :func:`match_source_dtype` (``task.wire_dtype=float16``).
        """
        return super().train_step(
            match_source_dtype(sample, model), model, criterion, optimizer, update_num,
            ignore_grad,
        )

    def valid_step(self, sample, model, criterion):
        """fairseq's valid step, ``source`` first cast to the model's dtype if it differs.

        See :func:`match_source_dtype` (``task.wire_dtype=float16``).
        """
        return super().valid_step(match_source_dtype(sample, model), model, criterion)

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """fairseq's batch iterator, on which bad data becomes :class:`MegDataExit`.

        A crop is checked (NaN/inf, ``max_abs_value``) when it is read, i.e. while fairseq
        iterates (and when the trainer reads its first batch for a dummy batch); translating
        there gives the one-line error instead of fairseq's traceback.
        """
        # Why a class swap: the error must become a SystemExit in the main process (hydra
        # prints a traceback for any Exception; in a DataLoader worker a SystemExit would
        # kill the worker and lose the message, so the dataset raises MegDataError there and
        # torch re-raises it here). fairseq builds the EpochBatchIterator itself (no factory
        # hook), and ``first_batch`` (the trainer's dummy batch, read in this process) is a
        # property that no per-instance attribute can override; a wrapper object would have
        # to forward the whole iterator interface (state_dict, epoch, end_of_epoch, ...,
        # attribute writes) and would fail isinstance checks. A cached subclass of the
        # iterator's own class overrides just the two entry points, the rest stays fairseq's.
        epoch_iter = super().get_batch_iterator(dataset, *args, **kwargs)
        if hasattr(epoch_iter, "_get_iterator_for_epoch") and not isinstance(
            epoch_iter, _TranslatingEpochIterator
        ):
            epoch_iter.__class__ = _translating_class(type(epoch_iter))
        return epoch_iter


def check_loss_weights(
    weights: Optional[Sequence[float]], names: Optional[List[str]]
) -> None:
    """Raise a one-line ``ValueError`` unless ``weights`` (``criterion.loss_weights``) has one
    entry per name in ``names`` (the model's extra losses), or is unset, or a single weight;
    no check when ``names`` is ``None`` (a model that does not list its losses)."""
    if names is None or not weights or len(weights) == 1 or len(weights) == len(names):
        return
    raise ValueError(
        f"criterion.loss_weights={list(weights)} has {len(weights)} entries but the model has "
        f"{len(names)} extra losses ({', '.join(names)}): give one weight per extra loss"
    )


def match_source_dtype(sample: Optional[dict], model: torch.nn.Module) -> Optional[dict]:
    """Cast a batch's ``net_input.source`` to the dtype of the model's parameters, on its device.

    The trainer calls the task's steps after moving the batch to the device and after its own
    fp16/bf16 conversion (``Trainer._prepare_sample``, which converts float32 tensors only),
    so a ``task.wire_dtype=float16`` batch arrives here still float16 when the model is
    float32 (also under ``common.amp``) or bfloat16: the one cast happens here, on the device.
    A source already in the model's dtype (float32 on the wire, or float16 with
    ``common.fp16``) is passed on untouched.

    Parameters
    ----------
    sample : dict or None
        fairseq batch, ``{"id": ..., "net_input": {"source": (B, C, T), ...}}``.
    model : torch.nn.Module
        The model the batch goes to.

    Returns
    -------
    dict or None
        ``sample``, with ``net_input["source"]`` replaced when it was cast.
    """
    net_input = sample.get("net_input") if isinstance(sample, dict) else None
    source = net_input.get("source") if isinstance(net_input, dict) else None
    if not (torch.is_tensor(source) and source.is_floating_point()):
        return sample
    param = next(model.parameters(), None)
    if param is None or param.dtype == source.dtype or not param.is_floating_point():
        return sample
    return {**sample, "net_input": {**net_input, "source": source.to(param.dtype)}}


class _TranslatingEpochIterator:
    """Mixin over fairseq's epoch iterators: bad data in a batch -> :class:`MegDataExit`."""

    @property
    def first_batch(self):
        try:
            return super().first_batch
        except MegDataError as err:
            raise data_exit(err) from err

    def _get_iterator_for_epoch(self, *args, **kwargs):
        itr = super()._get_iterator_for_epoch(*args, **kwargs)
        if isinstance(itr, iterators.CountingIterator):
            itr._itr = _TranslatingIterator(itr._itr)
        return itr


_TRANSLATING_CLASSES: Dict[type, type] = {}


def _translating_class(base: type) -> type:
    """``base`` (a fairseq epoch iterator class) with :class:`_TranslatingEpochIterator`."""
    if base not in _TRANSLATING_CLASSES:
        _TRANSLATING_CLASSES[base] = type(
            f"MegTranslating{base.__name__}", (_TranslatingEpochIterator, base), {}
        )
    return _TRANSLATING_CLASSES[base]
