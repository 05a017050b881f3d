"""The ``meg_pretraining`` task: fairseq's audio pre-training task over MEG ``.npy`` manifests."""

import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask

from ..data.meg_dataset import MegDataError, MegNpyDataset


@dataclass
class MegPretrainingConfig(AudioPretrainingConfig):
    """:class:`AudioPretrainingConfig` with MEG defaults and the sensor count."""

    sample_rate: int = field(
        default=250,
        metadata={
            "help": "sampling rate (Hz) of the .npy segments; they carry none themselves, so "
            "this records it with the checkpoint (LibriBrain and make_manifest default: 250)"
        },
    )
    in_channels: int = field(
        default=306,
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


@register_task("meg_pretraining", dataclass=MegPretrainingConfig)
class MegPretrainingTask(AudioPretrainingTask):
    """Self-supervised pre-training on ``(channels, time)`` MEG segments.

    Reads ``{data}/{split}.tsv`` manifests (fairseq's format) of ``.npy`` segments with
    :class:`~meg2vec_fairseq.data.MegNpyDataset`; everything else (batching by
    ``max_tokens``, bucketing, model building, checkpoints) is fairseq's audio task.
    """

    cfg: MegPretrainingConfig

    def load_dataset(
        self, split: str, task_cfg: Optional[MegPretrainingConfig] = None, **kwargs
    ) -> None:
        """Load ``{data}/{split}.tsv`` as a :class:`MegNpyDataset`."""
        task_cfg = task_cfg or self.cfg
        for unsupported in ("binarized_dataset", "multi_corpus_keys", "labels"):
            if getattr(task_cfg, unsupported, None):
                raise MegDataError(f"meg_pretraining does not support task.{unsupported}")
        if getattr(task_cfg, "precompute_mask_config", None) is not None:
            raise MegDataError("meg_pretraining does not support task.precompute_mask_config")

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
        )
