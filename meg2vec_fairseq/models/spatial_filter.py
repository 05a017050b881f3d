"""Spatial whitening of the sensors: a front end that keeps their principal subspace, and
the running covariance and per-crop whitenings it and the power path use.

Notes
-----
MEG sensor space is dominated by a few strong components, and a task-related power change
often sits in weaker ones. A first convolution that mixes all sensors buries such a change
under the strong components, and a linear probe of pooled feature power cannot un-mix it
(docs/pretraining_research.md, round 8: on the synthetic benchmark the sustained state lives in
principal components 17-32; a fresh first convolution on the raw sensors probes it at chance,
on the top 32 whitened components at 0.73). :class:`PrincipalSubspaceWhitening` projects each
input onto the top ``rank`` principal directions of the sensor covariance and whitens them
(shrunk by ``shrinkage`` times the mean eigenvalue): ``W = V_k diag((e_k + s mean(e))^-1/2)
V_k^T``, a ``(C, C)`` matrix of rank ``k``. This is the "virtual sensors" step of MEG
pipelines (PCA after MaxFilter, MNE's ``UnsupervisedSpatialFilter``) inside the model.

The covariance is a running average over training batches (:class:`RunningSensorCovariance`,
like BatchNorm's statistics; saved in checkpoints), updated by the model's pre-training
forward from the crops as they come from the data (:meth:`RunningSensorCovariance.update`),
before sensor masking or a pretext view alters them; the filter's own forward only reads it.
The power path's whitened sensors (``sensor_power_path_whiten``) use the same statistics, each
crop whitened over the sensors that sensor masking kept (:func:`kept_sensor_whitening`).
``W`` is invariant to the signs and rotations of the eigenvectors inside the subspace, so it
changes smoothly as the estimate improves. A model that has never trained (random-init
baselines) uses each batch's own covariance.
"""

from typing import Optional, Tuple

import torch
from torch import nn


def centre_crops(
    x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each sensor of each crop centred over its non-padded samples; padded samples zero.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, T)``.
    padding_mask : torch.Tensor or None
        ``(B, T)``, True where padded.

    Returns
    -------
    centred : torch.Tensor
        ``(B, C, T)``.
    count : torch.Tensor
        ``(B, 1, 1)`` or a scalar: non-padded samples per crop (at least 2, for unbiased
        variances).
    """
    if padding_mask is None:
        return x - x.mean(dim=-1, keepdim=True), torch.tensor(float(max(x.size(-1), 2)))
    keep = (~padding_mask).unsqueeze(1).to(x.dtype)
    count = keep.sum(dim=-1, keepdim=True).clamp(min=2)
    mean = (x * keep).sum(dim=-1, keepdim=True) / count
    return (x - mean) * keep, count


def sensor_covariance(
    x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Sensor covariance of a batch of centred crops: ``(B, C, T)`` -> ``(C, C)``.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, T)``, each sensor already centred per crop.
    padding_mask : torch.Tensor or None
        ``(B, T)``, True where padded: those samples are zeroed and not counted.
    """
    samples = x.size(0) * x.size(-1)
    if padding_mask is not None:
        x = x * (~padding_mask).unsqueeze(1)
        samples = int((~padding_mask).sum())
    flat = x.transpose(0, 1).reshape(x.size(1), -1)
    return flat @ flat.t() / max(samples - 1, 1)


def whitening_matrix(
    covariance: torch.Tensor, shrinkage: float, rank: Optional[int] = None
) -> torch.Tensor:
    """Shrunk whitening ``V_k diag((e_k + shrinkage * mean(e)) ** -1/2) V_k^T`` (float32).

    Parameters
    ----------
    covariance : torch.Tensor
        ``(..., C, C)`` symmetric (a batch of covariances gives a batch of matrices).
    shrinkage : float
        Added to the eigenvalues, in units of their mean.
    rank : int or None
        Keep only the ``rank`` largest eigen-directions (None: all, a full-rank ZCA).
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
    eigenvalues = eigenvalues.clamp(min=0)
    ridge = shrinkage * eigenvalues.mean(dim=-1, keepdim=True).clamp(min=1e-12)
    if rank is not None:
        eigenvalues, eigenvectors = eigenvalues[..., -rank:], eigenvectors[..., -rank:]
    scale = (eigenvalues + ridge).rsqrt()
    return ((eigenvectors * scale.unsqueeze(-2)) @ eigenvectors.transpose(-1, -2)).float()


def kept_sensor_whitening(
    covariance: torch.Tensor, kept: torch.Tensor, shrinkage: float
) -> torch.Tensor:
    """For each crop, the shrunk whitening of the covariance of its kept sensors only.

    Sensor masking zeroes different sensors in each crop; a whitening of all sensors would
    then miss the zeroed sensors' share of every strong component, which is what it
    subtracts. Here each crop's matrix whitens the block of ``covariance`` between its kept
    sensors (shrunk by ``shrinkage`` times that block's mean eigenvalue) and is zero in the
    rows and columns of the others.

    Parameters
    ----------
    covariance : torch.Tensor
        ``(C, C)`` sensor covariance of complete crops.
    kept : torch.Tensor
        ``(B, C)`` boolean, True for the sensors a crop kept.
    shrinkage : float
        Added to the kept block's eigenvalues, in units of their mean.

    Returns
    -------
    torch.Tensor
        ``(B, C, C)`` float32.
    """
    keep = kept.double()
    pairs = keep.unsqueeze(-1) * keep.unsqueeze(-2)
    block = covariance.double() * pairs
    mean_eigenvalue = block.diagonal(dim1=-2, dim2=-1).sum(-1) / keep.sum(-1).clamp(min=1)
    # the dropped sensors' diagonal at the kept block's mean eigenvalue: the whole matrix has
    # the block's mean eigenvalue (so its ridge), and a block-diagonal matrix's whitening is
    # block-diagonal (the dropped block's is zeroed below)
    block = block + torch.diag_embed((1 - keep) * mean_eigenvalue.unsqueeze(-1))
    return whitening_matrix(block, shrinkage) * pairs.float()


class RunningSensorCovariance(nn.Module):
    """A running average of the sensor covariance of training crops (saved in checkpoints).

    Updated by the model's pre-training forward from the crops as they come from the data
    (:meth:`update`), before sensor masking or a pretext view alters them. A model that never
    trained has no estimate: :meth:`covariance` then returns a batch's own.

    Parameters
    ----------
    in_channels : int
        Number of sensors ``C``.
    momentum : float
        Weight of each training batch in the running covariance, in (0, 1].
    """

    def __init__(self, in_channels: int, momentum: float = 0.01) -> None:
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum={momentum}: must be in (0, 1]")
        self.momentum = float(momentum)
        self.register_buffer("running_covariance", torch.eye(in_channels))
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    @staticmethod
    def batch_covariance(
        x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Sensor covariance of a batch, each crop's sensor mean removed (padding excluded)."""
        return sensor_covariance(centre_crops(x, padding_mask)[0], padding_mask)

    @torch.no_grad()
    def update(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> None:
        """Fold a training batch ``(B, C, T)`` into the running covariance.

        The first batch replaces the identity it starts from; later ones move it by
        ``momentum``.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            covariance = self.batch_covariance(x.float(), padding_mask)
            if int(self.batches_seen) == 0:
                self.running_covariance.copy_(covariance)
            else:
                # float32 arithmetic even where fairseq's bf16/fp16 mode converted the buffer
                self.running_covariance.copy_(
                    torch.lerp(self.running_covariance.float(), covariance, self.momentum))
            self.batches_seen += 1

    def covariance(self, x: torch.Tensor) -> torch.Tensor:
        """The running covariance (float32), or ``x``'s batch covariance while no training
        batch has been folded in (a model that never trained)."""
        if int(self.batches_seen) == 0:
            return self.batch_covariance(x.float())
        return self.running_covariance.float()


class PrincipalSubspaceWhitening(RunningSensorCovariance):
    """``(B, C, T) -> (B, C, T)``: projection onto the whitened top-``rank`` sensor subspace.

    Parameters
    ----------
    in_channels : int
        Number of sensors ``C``.
    rank : int
        Principal directions kept, ``1 <= rank <= C``.
    shrinkage : float
        Added to the kept eigenvalues, in units of the mean eigenvalue (>= 0).
    momentum : float
        Weight of each training batch in the running covariance, in (0, 1].
    """

    def __init__(
        self, in_channels: int, rank: int, shrinkage: float = 1.0, momentum: float = 0.01
    ) -> None:
        if not 1 <= rank <= in_channels:
            raise ValueError(f"rank={rank}: must be in 1..{in_channels} (the sensors)")
        if not shrinkage >= 0:
            raise ValueError(f"shrinkage={shrinkage}: must be >= 0")
        super().__init__(in_channels, momentum)
        self.rank, self.shrinkage = rank, float(shrinkage)

    def matrix(self, covariance: torch.Tensor) -> torch.Tensor:
        """``W`` for a covariance (float32, ``(C, C)``)."""
        return whitening_matrix(covariance, self.shrinkage, self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter ``(B, C, T)`` sensors with the running covariance (a batch's own covariance
        while no batch has been folded in: a model that never trained)."""
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            matrix = self.matrix(self.covariance(x))
        return torch.einsum("dc,bct->bdt", matrix.to(x.dtype), x)
