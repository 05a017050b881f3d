"""fairseq models of the plugin (importing registers them)."""

from .meg2vec import Meg2VecConfig, Meg2VecModel, MultiChannelConvFeatureExtractor  # noqa: F401
