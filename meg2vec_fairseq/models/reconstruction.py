"""Masked reconstruction of the (whitened) sensors under each frame.

Notes
-----
Codes of a random projection (:mod:`.targets`) carry about ten bits per frame and follow the
few strongest spatial components of MEG; a task-related power change in weaker components
(docs/pretraining_research.md, round 8) is then never asked for. Here a linear head on the
Transformer output of each *masked* frame regresses the sensors under that frame: each sensor
centred over its crop, optionally spatially whitened with shrinkage (``whiten``, as
:func:`.targets.spatial_whitening`, so that weaker components weigh as much as the strong
ones), averaged over the frame's receptive field, and standardised per sensor with the
batch's statistics. The mean squared error then rewards encoding every spatial component that
the unmasked context can predict, not only the dominant ones (masked autoencoders for EEG
reconstruct the signal in the same spirit).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from .masked_regression import MaskedRegressionHead, standardise_frames
from .spatial_filter import centre_crops
from .targets import spatial_whitening


class SensorReconstructionTargets(MaskedRegressionHead):
    """Per-frame sensor targets and the linear head that predicts them.

    Parameters
    ----------
    embed_dim : int
        Dimension of the encoder output the head reads.
    in_channels : int
        Number of sensors (the target dimension).
    receptive_field, stride : int
        Input window and hop of one frame of the conv encoder (samples).
    whiten : float
        Shrinkage of the spatial whitening, in units of the mean eigenvalue; 0 = none.
    """

    def __init__(
        self, embed_dim: int, in_channels: int, receptive_field: int, stride: int,
        whiten: float = 0.0,
    ) -> None:
        super().__init__(embed_dim, in_channels)
        if not whiten >= 0:
            raise ValueError(f"whiten={whiten}: must be >= 0 (0 = off)")
        self.receptive_field = receptive_field
        self.stride = stride
        self.whiten = float(whiten)

    @torch.no_grad()
    def targets(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``(B, C, T)`` -> ``(B, frames, C)``, ``frames = (T - receptive_field) // stride + 1``
        (the conv encoder's frame count)."""
        with torch.autocast(device_type=source.device.type, enabled=False):
            x, _ = centre_crops(source.float(), padding_mask)
            if self.whiten > 0:
                x = spatial_whitening(x, self.whiten, padding_mask) @ x
            frames = F.avg_pool1d(x, self.receptive_field, stride=self.stride)
            return standardise_frames(frames.transpose(1, 2))
