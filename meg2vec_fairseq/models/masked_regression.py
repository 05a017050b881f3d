"""A linear head on the Transformer output of masked frames, regressing per-frame targets.

Shared by the regression objectives of ``meg2vec`` (:mod:`.band_power`,
:mod:`.reconstruction`): each subclass computes its ``(B, frames, D)`` targets from the full
input (no gradient); the loss is the mean squared error of the head on the masked frames.
:mod:`.frame_power` uses the same head on the conv encoder's output with every unpadded frame
selected, and ``encoder_frame_power`` on the Transformer output with the unmasked frames
selected (the ``mask_indices`` argument is whichever frames are scored).
"""

import torch
import torch.nn.functional as F
from torch import nn


class MaskedRegressionHead(nn.Module):
    """Linear head ``embed_dim -> target_dim`` scored on masked frames only.

    Parameters
    ----------
    embed_dim : int
        Dimension of the encoder output the head reads.
    target_dim : int
        Dimension of one frame's target.
    """

    def __init__(self, embed_dim: int, target_dim: int) -> None:
        super().__init__()
        self.head = nn.Linear(embed_dim, target_dim)

    def loss(
        self, encoded: torch.Tensor, mask_indices: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared error of the head on the masked frames.

        Parameters
        ----------
        encoded : torch.Tensor
            ``(B, T', D)`` encoder output.
        mask_indices : torch.Tensor
            ``(B, T')`` boolean, True at masked frames.
        targets : torch.Tensor
            ``(B, frames >= T', target_dim)`` (cut to ``T'`` here, as fairseq cuts the
            features to a multiple of ``crop_seq_to_multiple``).
        """
        targets = targets[:, : encoded.size(1)]
        predicted = self.head(encoded[mask_indices]).float()  # the loss in float32
        return F.mse_loss(predicted, targets[mask_indices])


def standardise_frames(features: torch.Tensor) -> torch.Tensor:
    """``(B, frames, D)`` standardised per feature with the batch's statistics, which keeps
    the differences between the crops of a batch."""
    mean = features.mean(dim=(0, 1), keepdim=True)
    std = features.std(dim=(0, 1), keepdim=True).clamp_min(1e-4)
    return (features - mean) / std
