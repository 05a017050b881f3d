"""Input transforms and heads for the pretext tasks of *The Brain's Bitter Lesson*.

Jayalath et al. (2025) pre-train MEG encoders by transforming the input and asking a
linear head on the pooled representation which transform was applied: band-stop
filtering (which band was removed), phase shift and amplitude scaling of a random subset
of sensors (by how much). Here the transforms act on ``source (B, C, T)`` before the
wav2vec 2.0 forward, one class per sample for each enabled family, and the heads read the
final Transformer output averaged over the non-padded frames.

All transforms are done in float32 along the time axis with the real FFT, so that they are
exact (no filter ringing) and identical on CPU and GPU.
"""

import ast
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# Fixed order of the pretext families: the order of their extra losses in
# ``Meg2VecModel.get_extra_losses`` and of the transforms applied to the input.
PRETEXT_NAMES: Tuple[str, ...] = ("band_stop", "phase_shift", "amplitude_scale")


def parse_bands(spec: str, option: str = "pretext_band_stop") -> List[Tuple[float, float]]:
    """Parse a ``"[(low_hz, high_hz), ...]"`` string (``""`` = no band) into float pairs.

    Raises
    ------
    ValueError
        On anything that is not a list of two-number tuples.
    """
    if not spec or not spec.strip():
        return []
    try:
        value = ast.literal_eval(spec)  # literal only: no code from configs is run
        bands = [(float(low), float(high)) for low, high in value]
    except (ValueError, SyntaxError, TypeError) as err:
        raise ValueError(
            f"{option}={spec!r}: expected a list of (low_hz, high_hz) tuples, "
            f"e.g. '[(1,4),(4,8),(8,13),(13,30)]' ({err})"
        ) from None
    return bands


def band_stop(source: torch.Tensor, bands: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """Remove one frequency band per sample from all sensors (zeroed rFFT bins).

    Parameters
    ----------
    source : torch.Tensor
        ``(B, C, T)`` signals.
    bands : torch.Tensor
        ``(B, 2)`` band edges ``(low_hz, high_hz)`` for each sample; bins with
        ``low <= f <= high`` are zeroed.
    sample_rate : float
        Sampling rate of ``source`` in Hz.

    Returns
    -------
    torch.Tensor
        ``(B, C, T)`` filtered signals, float32.
    """
    length = source.size(-1)
    spectrum = torch.fft.rfft(source.float(), dim=-1)
    freqs = torch.fft.rfftfreq(length, d=1.0 / sample_rate).to(source.device)
    stop = (freqs >= bands[:, :1]) & (freqs <= bands[:, 1:])  # (B, F)
    spectrum = spectrum * (~stop).unsqueeze(1)
    return torch.fft.irfft(spectrum, n=length, dim=-1)


def phase_shift(source: torch.Tensor, phase: torch.Tensor, sensors: torch.Tensor) -> torch.Tensor:
    """Shift the phase of chosen sensors by ``phase`` radians (analytic-signal rotation).

    ``Re((x + i H[x]) e^{i phi}) = x cos(phi) - H[x] sin(phi)``: every positive-frequency
    rFFT bin is multiplied by ``e^{i phi}``; the DC and Nyquist bins, which have no
    quadrature part, by ``cos(phi)``. A shift of 0 is the identity and a shift of pi flips
    the sign.

    Parameters
    ----------
    source : torch.Tensor
        ``(B, C, T)`` signals.
    phase : torch.Tensor
        ``(B,)`` shift in radians for each sample.
    sensors : torch.Tensor
        ``(B, C)`` boolean, True for the sensors to shift.

    Returns
    -------
    torch.Tensor
        ``(B, C, T)`` float32.
    """
    length = source.size(-1)
    spectrum = torch.fft.rfft(source.float(), dim=-1)
    n_bins = spectrum.size(-1)
    phase = phase.float()  # a buffer of a model cast to bf16 (common.bf16) comes as bf16
    rotation = torch.polar(torch.ones_like(phase), phase)  # e^{i phi}, (B,)
    factors = rotation.unsqueeze(-1).expand(-1, n_bins).clone()  # (B, F)
    factors[:, 0] = torch.cos(phase)
    if length % 2 == 0:  # a Nyquist bin exists
        factors[:, -1] = torch.cos(phase)
    factors = torch.where(
        sensors.unsqueeze(-1), factors.unsqueeze(1), torch.ones_like(factors[:1, None])
    )
    return torch.fft.irfft(spectrum * factors, n=length, dim=-1)


def amplitude_scale(
    source: torch.Tensor, scale: torch.Tensor, sensors: torch.Tensor
) -> torch.Tensor:
    """Multiply chosen sensors by ``scale``.

    Parameters
    ----------
    source : torch.Tensor
        ``(B, C, T)`` signals.
    scale : torch.Tensor
        ``(B,)`` factor for each sample.
    sensors : torch.Tensor
        ``(B, C)`` boolean, True for the sensors to scale.

    Returns
    -------
    torch.Tensor
        ``(B, C, T)`` float32.
    """
    factors = torch.where(
        sensors, scale.float().unsqueeze(-1), torch.ones_like(sensors, dtype=torch.float32)
    )
    return source.float() * factors.unsqueeze(-1)


def random_sensor_subset(batch: int, channels: int, fraction: float, device) -> torch.Tensor:
    """``(batch, channels)`` boolean: ``max(1, round(fraction * channels))`` sensors per row."""
    count = max(1, int(round(fraction * channels)))
    ranks = torch.rand(batch, channels, device=device).argsort(dim=-1)
    return ranks < count


def amplitude_factors(classes: int, max_scale: float) -> torch.Tensor:
    """Geometric grid of ``classes`` factors from ``1 / max_scale`` to ``max_scale``."""
    return torch.exp(torch.linspace(-math.log(max_scale), math.log(max_scale), classes))


def phase_shifts(classes: int) -> torch.Tensor:
    """``2 pi k / classes`` for ``k = 0 .. classes - 1`` (class 0 is the identity)."""
    return 2 * math.pi * torch.arange(classes, dtype=torch.float32) / classes


class PretextTasks(nn.Module):
    """The enabled pretext families: random input transforms and their linear heads.

    Parameters
    ----------
    embed_dim : int
        Width of the Transformer output the heads read.
    sample_rate : float or None
        Input sampling rate (Hz); needed only with ``bands``.
    bands : sequence of (float, float)
        Band-stop classes (empty = family off).
    phase_classes : int
        Number of phase-shift classes (0 = off).
    amplitude_classes : int
        Number of amplitude-scale classes (0 = off).
    amplitude_max : float
        Largest amplitude factor; the grid is geometric from ``1/amplitude_max``.
    sensor_fraction : float
        Share of the sensors that the phase and amplitude transforms touch.
    """

    def __init__(
        self,
        embed_dim: int,
        sample_rate: Optional[float],
        bands: Sequence[Tuple[float, float]],
        phase_classes: int,
        amplitude_classes: int,
        amplitude_max: float,
        sensor_fraction: float,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.sensor_fraction = sensor_fraction
        classes = {
            "band_stop": len(bands),
            "phase_shift": phase_classes,
            "amplitude_scale": amplitude_classes,
        }
        self.names = [name for name in PRETEXT_NAMES if classes[name] > 0]
        self.heads = nn.ModuleDict(
            {name: nn.Linear(embed_dim, classes[name]) for name in self.names}
        )
        # Class values are constants of the configuration, not state: not in the state dict.
        self.register_buffer(
            "bands", torch.tensor(list(bands), dtype=torch.float32).view(-1, 2), persistent=False
        )
        self.register_buffer("phases", phase_shifts(max(phase_classes, 1)), persistent=False)
        self.register_buffer(
            "factors", amplitude_factors(max(amplitude_classes, 1), amplitude_max), persistent=False
        )

    def transform(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Apply one random class of every enabled family to each sample.

        Families are composed in :data:`PRETEXT_NAMES` order. Padded samples
        (``padding_mask`` True) keep their original values.

        Returns
        -------
        transformed : torch.Tensor
            ``(B, C, T)``, in ``source``'s dtype.
        labels : dict of str to torch.Tensor
            ``(B,)`` class index of each family.
        """
        batch, channels, _ = source.shape
        device = source.device
        labels: Dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=device.type, enabled=False):  # FFTs in float32
            x = source.float()
            for name in self.names:
                n_classes = self.heads[name].out_features
                label = torch.randint(n_classes, (batch,), device=device)
                labels[name] = label
                if name == "band_stop":
                    x = band_stop(x, self.bands[label], self.sample_rate)
                else:
                    sensors = random_sensor_subset(batch, channels, self.sensor_fraction, device)
                    if name == "phase_shift":
                        x = phase_shift(x, self.phases[label], sensors)
                    else:
                        x = amplitude_scale(x, self.factors[label], sensors)
            if padding_mask is not None:
                x = torch.where(padding_mask.unsqueeze(1), source.float(), x)
        return x.to(source.dtype), labels

    def forward(
        self,
        encoded: torch.Tensor,
        padding_mask: Optional[torch.Tensor],
        labels: Dict[str, torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """Losses and accuracies of the heads on the time-pooled encoder output.

        Parameters
        ----------
        encoded : torch.Tensor
            ``(B, T', D)`` final Transformer output.
        padding_mask : torch.Tensor or None
            ``(B, T')`` frame padding mask (True = padded).
        labels : dict of str to torch.Tensor
            From :meth:`transform`.

        Returns
        -------
        dict
            ``pretext_<name>_loss`` (mean cross-entropy over the batch, with grad) and
            ``pretext_<name>_accuracy`` (no grad) for each enabled family.
        """
        if padding_mask is None:
            pooled = encoded.mean(dim=1)
        else:
            keep = (~padding_mask).unsqueeze(-1).to(encoded.dtype)
            pooled = (encoded * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        out: Dict[str, torch.Tensor] = {}
        for name in self.names:
            logits = self.heads[name](pooled).float()
            out[f"pretext_{name}_loss"] = F.cross_entropy(logits, labels[name])
            out[f"pretext_{name}_accuracy"] = (
                (logits.argmax(-1) == labels[name]).float().mean().detach()
            )
        return out
