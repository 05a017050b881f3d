"""fairseq datasets of the plugin."""

from .meg_dataset import MegDataError, MegNpyDataset, read_manifest  # noqa: F401
