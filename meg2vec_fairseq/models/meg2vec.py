"""The ``meg2vec`` model: fairseq's wav2vec 2.0 with a multi-channel feature encoder.

Everything that makes wav2vec 2.0 work -- span masking, the Gumbel product quantizer,
sampled negatives, ``get_logits`` / ``get_targets`` / ``get_extra_losses`` for fairseq's
``wav2vec`` criterion, the Transformer with convolutional positional embeddings -- is
inherited unchanged from :class:`fairseq.models.wav2vec.wav2vec2.Wav2Vec2Model`.
Only the front changes: the first convolution reads ``in_channels`` MEG sensors instead
of one audio channel, and the input is ``(batch, channels, time)`` instead of
``(batch, time)``.
"""

from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from fairseq.models import register_model
from fairseq.models.wav2vec.wav2vec2 import (
    ConvFeatureExtractionModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)
from omegaconf import II
from torch import nn

# Default stack for 250 Hz MEG: total stride 10 -> 25 frames/s (40 ms per frame),
# receptive field 60 samples (240 ms). See the README for the reasoning.
DEFAULT_CONV_FEATURE_LAYERS = "[(512, 10, 5), (512, 3, 2), (512, 3, 1), (512, 3, 1)]"


@dataclass
class Meg2VecConfig(Wav2Vec2Config):
    """wav2vec 2.0 configuration plus the number of MEG input channels."""

    in_channels: int = field(
        default=II("task.in_channels"),
        metadata={
            "help": "number of MEG sensors the first convolution reads; follows "
            "task.in_channels so that data and model cannot disagree silently"
        },
    )
    conv_feature_layers: str = field(
        default=DEFAULT_CONV_FEATURE_LAYERS,
        metadata={
            "help": "string describing the convolutional feature encoder as a list of "
            "(dim, kernel_size, stride) tuples; the first conv reads in_channels sensors. "
            "Frame rate = sample_rate / prod(strides): the default gives 25 frames/s at 250 Hz"
        },
    )
    conv_pos: int = field(
        default=64,
        metadata={"help": "kernel size (in frames) of the convolutional positional embedding"},
    )


class MultiChannelConvFeatureExtractor(ConvFeatureExtractionModel):
    """fairseq's convolutional feature encoder, reading ``(B, C, T)`` instead of ``(B, T)``.

    Built exactly as :class:`ConvFeatureExtractionModel` (so ``extractor_mode="default"``
    puts GroupNorm after the first convolution), then the first convolution is replaced by
    one with ``in_channels`` inputs.

    Parameters
    ----------
    in_channels : int
        Number of input sensors.
    conv_layers : list of tuple of int
        ``(dim, kernel_size, stride)`` for each convolution.
    mode : str
        ``"default"`` (GroupNorm after the first conv) or ``"layer_norm"``.
    conv_bias : bool
        Whether the convolutions have a bias.
    dropout : float
        Dropout after each convolution.
    """

    def __init__(
        self,
        in_channels: int,
        conv_layers: List[Tuple[int, int, int]],
        mode: str = "default",
        conv_bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(conv_layers=conv_layers, dropout=dropout, mode=mode, conv_bias=conv_bias)
        self.in_channels = in_channels
        dim, kernel_size, stride = conv_layers[0]
        first_conv = nn.Conv1d(in_channels, dim, kernel_size, stride=stride, bias=conv_bias)
        nn.init.kaiming_normal_(first_conv.weight)
        self.conv_layers[0][0] = first_conv  # each block is Sequential(conv, dropout, ...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, T)`` sensors to ``(B, D, T')`` features."""
        if x.dim() != 3 or x.size(1) != self.in_channels:
            raise ValueError(
                f"meg2vec expects input of shape (batch, {self.in_channels}, time), "
                f"got {tuple(x.shape)}"
            )
        for conv in self.conv_layers:
            x = conv(x)
        return x


@register_model("meg2vec", dataclass=Meg2VecConfig)
class Meg2VecModel(Wav2Vec2Model):
    """wav2vec 2.0 for multi-channel MEG input of shape ``(batch, in_channels, time)``.

    ``forward(source, padding_mask=None, ...)`` takes ``source`` of shape ``(B, C, T)``
    and an optional ``(B, T)`` boolean ``padding_mask`` (True = padded sample); all
    outputs are those of :class:`Wav2Vec2Model`.
    """

    cfg: Meg2VecConfig

    def __init__(self, cfg: Meg2VecConfig) -> None:
        super().__init__(cfg)
        self.feature_extractor = MultiChannelConvFeatureExtractor(
            in_channels=cfg.in_channels,
            conv_layers=eval(cfg.conv_feature_layers),  # fairseq's own format for the stack
            mode=cfg.extractor_mode,
            conv_bias=cfg.conv_bias,
        )

    @classmethod
    def build_model(cls, cfg: Meg2VecConfig, task=None) -> "Meg2VecModel":
        """Build a new model instance (fairseq entry point)."""
        return cls(cfg)

    def frames_per_second(self, sample_rate: float) -> float:
        """Frame rate of the encoder output for input sampled at ``sample_rate`` Hz."""
        return frame_rate(self.cfg.conv_feature_layers, sample_rate)


def conv_frame_geometry(conv_feature_layers: str) -> Tuple[int, int]:
    """``(receptive_field, stride)`` in input samples of a ``conv_feature_layers`` string."""
    receptive_field, stride = 1, 1
    for _dim, kernel, layer_stride in eval(conv_feature_layers):  # fairseq's own format
        receptive_field += (kernel - 1) * stride
        stride *= layer_stride
    return receptive_field, stride


def total_stride(conv_feature_layers: str) -> int:
    """Product of the strides of a ``conv_feature_layers`` string."""
    return conv_frame_geometry(conv_feature_layers)[1]


def frame_rate(conv_feature_layers: str, sample_rate: float) -> float:
    """Encoder frames per second for a conv stack at a given input sampling rate.

    Parameters
    ----------
    conv_feature_layers : str
        fairseq's ``"[(dim, kernel, stride), ...]"`` description of the stack.
    sample_rate : float
        Input sampling rate in Hz.

    Returns
    -------
    float
        Frames per second of the feature sequence.
    """
    return sample_rate / total_stride(conv_feature_layers)
