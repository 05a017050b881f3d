"""Geometry of a conv encoder described by fairseq's ``conv_feature_layers`` string.

``"[(dim, kernel, stride), ...]"`` fixes where each output frame lies in the input: frame
``j`` covers samples ``[j * stride, j * stride + receptive_field)``. The model's targets, the
probes' frame pooling and the feature writer all place frames with these functions, so the
formula has one owner. Pure Python: importing this module imports neither torch nor fairseq.
"""

from typing import Tuple


def frame_count(length: int, receptive_field: int, stride: int) -> int:
    """Frames of ``receptive_field`` samples every ``stride`` samples that fit in ``length``
    samples (no padding): ``(length - receptive_field) // stride + 1``."""
    return (length - receptive_field) // stride + 1


def conv_frame_geometry(conv_feature_layers: str) -> Tuple[int, int]:
    """``(receptive_field, stride)`` in input samples of a ``conv_feature_layers`` string."""
    receptive_field, stride = 1, 1
    for _dim, kernel, layer_stride in eval(conv_feature_layers):  # fairseq's own format
        receptive_field += (kernel - 1) * stride
        stride *= layer_stride
    return receptive_field, stride


def conv_frame_count(conv_feature_layers: str, length: int) -> int:
    """Frames the conv stack of a ``conv_feature_layers`` string makes of ``length`` input
    samples (:func:`frame_count` with the stack's receptive field and stride)."""
    return frame_count(length, *conv_frame_geometry(conv_feature_layers))


def conv_output_dim(conv_feature_layers: str) -> int:
    """Channel count of the last convolution of a ``conv_feature_layers`` string (the width of
    the conv encoder's output frames)."""
    return eval(conv_feature_layers)[-1][0]  # fairseq's own format


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
