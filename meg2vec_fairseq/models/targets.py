"""Frozen random-projection targets after BEST-RQ (Chiu et al., 2022).

wav2vec 2.0's targets are a learned quantization of the same CNN features that the
context network reads, so they can drift towards whatever is easiest to predict. BEST-RQ
instead quantizes the *input* with a random projection and a random codebook that are never
trained. :class:`RandomProjectionQuantizer` does that for the raw MEG window under each
frame and plugs into fairseq's :class:`~fairseq.models.wav2vec.wav2vec2.Wav2Vec2Model` as
its ``quantizer`` (same calling convention as ``GumbelVectorQuantizer``), so fairseq's
forward, negatives and criterion are used unchanged.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .spatial_filter import centre_crops, sensor_covariance, whitening_matrix

#: Per-sensor normalisations of a crop before the random projection.
CROP_NORMS = ("zscore", "center")


def spatial_whitening(
    x: torch.Tensor, shrinkage: float, padding_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Shrunk whitening matrix of the sensors of a centred batch: ``(B, C, T)`` -> ``(C, C)``.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, T)`` float32 batch, each sensor centred per crop.
    shrinkage : float
        Added to every eigenvalue of the batch's sensor covariance, in units of their mean.
    padding_mask : torch.Tensor or None
        ``(B, T)``, True where padded (left out of the covariance).

    Returns
    -------
    torch.Tensor
        ``W = V diag((e + shrinkage * mean(e)) ** -1/2) V^T``, symmetric.
    """
    return whitening_matrix(sensor_covariance(x, padding_mask), shrinkage)


class RandomProjectionQuantizer(nn.Module):
    """Frozen random projection of input patches, matched to a frozen random codebook.

    For every frame of the conv encoder, the input window under it (``receptive_field``
    samples of all sensors, hop ``stride``; the same windows as
    ``source.unfold(-1, receptive_field, stride)``) is projected to ``codebook_dim`` by a
    fixed random matrix, l2-normalised and replaced by the index of the nearest (cosine)
    entry of a fixed random l2-normalised codebook. Before projection each sensor is
    z-scored over the non-padded samples of its crop (``crop_norm="zscore"``), so that
    codes follow the shape and relative amplitude of the signal within a crop and not the
    recording's gain; or only centred (``crop_norm="center"``), so that codes also follow
    each sensor's power in the crop relative to its recording (segments are z-scored per
    recording by ``make_manifest``): a sustained change of sensor power then changes the
    codes, whereas per-crop z-scoring erases it.

    With ``codebooks > 1`` every frame gets that many codes, each from its own projection and
    codebook (BEST-RQ's multiple codebooks), and its target vector is the concatenation of
    their code vectors. One code of ~10 bits mostly follows the strongest components of a
    306-sensor window; independent projections each round a different view, so weak
    components (small transients) change some of the codes.

    With ``whiten > 0`` the normalised sensors are then spatially whitened with the batch's
    sensor covariance, shrunk towards its mean eigenvalue: ``x <- V diag((e + whiten *
    mean(e)) ** -1/2) V^T x`` (``e, V`` its eigenvalues and vectors). MEG sensor space is
    dominated by a few strong components (environmental noise, alpha, heartbeat), so a random
    projection of the sensors mostly encodes those; whitening gives every strong spatial
    component a similar share of the codes, while components weaker than the shrinkage (the
    noise floor, directions a MaxFilter removed) stay small instead of being blown up.

    Projection and codebook are buffers (never trained, saved in checkpoints) drawn from a
    ``torch.Generator`` seeded with ``seed``, hence identical for every model built with
    the same geometry.

    Usage inside the model: :meth:`stash` the codes of a batch's source before fairseq's
    forward, :meth:`set_mask` the mask indices when fairseq draws them; fairseq then calls
    ``quantizer(y)`` on the masked frames and receives their code vectors.
    ``forward`` ignores the values of its input (the CNN features of the masked frames) and
    only checks their shape.

    Parameters
    ----------
    in_channels : int
        Number of sensors.
    receptive_field, stride : int
        Input window and hop of one frame of the conv encoder (in samples).
    codebook_size : int
        Number of codes.
    codebook_dim : int
        Dimension of the projection and of the code vectors returned.
    seed : int
        Seed of the projection and codebook.
    crop_norm : {"zscore", "center"}
        Per-sensor normalisation of each crop before projection (see above).
    whiten : float
        Shrinkage of the spatial whitening in units of the mean eigenvalue (see above);
        0 = no whitening.
    codebooks : int
        Number of independent projections and codebooks (see above).
    """

    def __init__(
        self,
        in_channels: int,
        receptive_field: int,
        stride: int,
        codebook_size: int,
        codebook_dim: int,
        seed: int = 0,
        crop_norm: str = "zscore",
        whiten: float = 0.0,
        codebooks: int = 1,
    ) -> None:
        super().__init__()
        if crop_norm not in CROP_NORMS:
            raise ValueError(f"crop_norm={crop_norm!r}: expected one of {CROP_NORMS}")
        if not whiten >= 0:
            raise ValueError(f"whiten={whiten}: must be >= 0 (0 = off)")
        if codebooks < 1:
            raise ValueError(f"codebooks={codebooks}: must be >= 1")
        self.crop_norm = crop_norm
        self.whiten = float(whiten)
        self.receptive_field = receptive_field
        self.stride = stride
        self.num_vars = codebook_size  # fairseq's name: the diversity term reads it
        self.codebook_dim = codebook_dim
        self.codebooks = codebooks
        generator = torch.Generator().manual_seed(seed)
        fan_in = in_channels * receptive_field
        # codebook k: projection rows [k * dim, (k + 1) * dim), codebook rows [k * size, ...);
        # drawn in this order so that codebooks=1 keeps the draws of a single codebook
        projection = torch.randn(
            codebooks * codebook_dim, in_channels, receptive_field, generator=generator
        )
        codebook = torch.randn(codebooks * codebook_size, codebook_dim, generator=generator)
        self.register_buffer("projection", projection / fan_in**0.5)
        self.register_buffer("codebook", F.normalize(codebook, dim=-1))
        self._codes: Optional[torch.Tensor] = None
        self._mask_indices: Optional[torch.Tensor] = None

    @torch.no_grad()
    def codes(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Code indices of every frame: ``(B, C, T)`` -> ``(B, frames, codebooks)`` long.

        ``frames = (T - receptive_field) // stride + 1``, the conv encoder's frame count;
        index ``k`` is the code in codebook ``k`` (``0 .. codebook_size - 1``).
        """
        projected = self.project(source, padding_mask)
        codebook = self.codebook.float().view(self.codebooks, self.num_vars, self.codebook_dim)
        with torch.autocast(device_type=source.device.type, enabled=False):  # float32 codes
            return torch.einsum("bfkd,kvd->bfkv", projected, codebook).argmax(dim=-1)

    @torch.no_grad()
    def project(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The random projections of every frame's window, each l2-normalised:
        ``(B, C, T)`` -> ``(B, frames, codebooks, codebook_dim)`` float32."""
        with torch.autocast(device_type=source.device.type, enabled=False):
            x, count = centre_crops(source.float(), padding_mask)
            if self.crop_norm == "zscore":
                std = (x.pow(2).sum(dim=-1, keepdim=True) / (count - 1)).sqrt()
                x = x / std.clamp(min=1e-8)
            if self.whiten > 0:
                x = spatial_whitening(x, self.whiten, padding_mask) @ x
            # One conv with the projection as kernel = projecting every unfolded window.
            # float32 buffers even in a model cast to bf16/fp16 (common.bf16): codes are computed
            # in float32 whatever the model's dtype
            projection = self.projection.float()
            projected = F.conv1d(x, projection, stride=self.stride).transpose(1, 2)
            projected = projected.unflatten(-1, (self.codebooks, self.codebook_dim))
            return F.normalize(projected, dim=-1)

    def stash(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> None:
        """Compute and keep the codes of ``source`` for the next :meth:`forward`."""
        self._codes = self.codes(source, padding_mask)

    def set_mask(self, mask_indices: Optional[torch.Tensor]) -> None:
        """Keep the ``(B, frames)`` boolean mask whose True frames fairseq will quantize."""
        self._mask_indices = mask_indices

    @property
    def stashed_codes(self) -> Optional[torch.Tensor]:
        """The ``(B, frames, codebooks)`` codes of the last :meth:`stash` (None after
        :meth:`clear`)."""
        return self._codes

    def clear(self) -> None:
        """Drop the stashed codes and mask (called after each forward)."""
        self._codes = None
        self._mask_indices = None

    def forward(self, x: torch.Tensor, produce_targets: bool = False) -> Dict[str, object]:
        """Code vectors of the stashed masked frames, in fairseq's quantizer format.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, M, D)`` features of the ``M`` masked frames per sample (values unused).
        produce_targets : bool
            Unused (fairseq's calling convention).

        Returns
        -------
        dict
            ``x``: ``(B, M, codebooks * codebook_dim)`` code vectors (one per codebook,
            concatenated); ``num_vars``: codebook size; ``code_perplexity``: exp of the
            entropy of code usage over the batch's masked frames (the mean over codebooks);
            ``prob_perplexity``: the same value without grad, so that fairseq's
            diversity term ``(num_vars - prob_perplexity) / num_vars`` is a constant with no
            gradient (keep its slot in ``criterion.loss_weights``; its weight does not
            matter); ``temp``: 0.0 (there is no Gumbel temperature).
        """
        if self._codes is None:
            raise RuntimeError(
                "random-projection targets: no codes stashed; the quantizer is only usable "
                "inside Meg2VecModel.forward"
            )
        codes = self._codes
        if self._mask_indices is not None:
            codes = codes[:, : self._mask_indices.size(1)][self._mask_indices].view(
                codes.size(0), -1, self.codebooks
            )
        if codes.shape[:2] != x.shape[:2]:
            raise RuntimeError(
                f"random-projection targets: {tuple(codes.shape[:2])} codes for "
                f"{tuple(x.shape[:2])} frames"
            )
        # row of each code in the stacked codebooks
        rows = codes + torch.arange(self.codebooks, device=codes.device) * self.num_vars
        counts = torch.bincount(rows.flatten(), minlength=self.codebooks * self.num_vars)
        probs = counts.float().view(self.codebooks, -1)
        probs = probs / probs.sum(dim=-1, keepdim=True).clamp(min=1)
        entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum(dim=-1)
        perplexity = torch.exp(entropy).mean()
        return {
            # the features' dtype, as project_q's
            "x": self.codebook[rows].flatten(2).to(x.dtype),
            "num_vars": self.num_vars,
            "code_perplexity": perplexity,
            "prob_perplexity": perplexity.detach(),
            "temp": 0.0,
        }


class CodeClassificationHead(nn.Module):
    """BEST-RQ's loss: classify each masked frame's code among all codes of each codebook.

    A linear head on the Transformer output of masked frames gives ``codebooks x
    codebook_size`` logits; the loss is their cross-entropy against the frame's codes (mean
    over masked frames and codebooks). Unlike the contrastive loss, which only tells the
    positive from a few sampled frames, its difficulty grows with what the codes hold.

    Parameters
    ----------
    embed_dim : int
        Dimension of the encoder output the head reads.
    codebook_size, codebooks : int
        Size and number of the quantizer's codebooks.
    """

    def __init__(self, embed_dim: int, codebook_size: int, codebooks: int = 1) -> None:
        super().__init__()
        self.codebook_size, self.codebooks = codebook_size, codebooks
        self.head = nn.Linear(embed_dim, codebooks * codebook_size)

    def loss(
        self, encoded: torch.Tensor, mask_indices: torch.Tensor, codes: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy of the head on the masked frames.

        ``encoded`` and ``mask_indices`` as in :meth:`.MaskedRegressionHead.loss`; ``codes``
        are the quantizer's ``(B, frames >= T', codebooks)`` :attr:`stashed_codes
        <RandomProjectionQuantizer.stashed_codes>`, cut to the encoder's ``T'`` frames.

        Returns
        -------
        loss, accuracy : torch.Tensor
            Scalars; the accuracy without gradient.
        """
        targets = codes[:, : encoded.size(1)][mask_indices]  # (N, codebooks)
        logits = self.head(encoded[mask_indices]).float()  # the loss in float32
        logits = logits.view(-1, self.codebooks, self.codebook_size)
        loss = F.cross_entropy(logits.transpose(1, 2), targets)
        accuracy = (logits.argmax(dim=-1) == targets).float().mean().detach()
        return loss, accuracy
