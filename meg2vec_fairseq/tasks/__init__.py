"""fairseq tasks of the plugin (importing registers them)."""

from .meg_pretraining import MegPretrainingConfig, MegPretrainingTask  # noqa: F401
