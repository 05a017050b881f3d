"""Masked prediction of each sensor's band power around a frame (spectral targets).

Notes
-----
LaBraM and Neuro-BERT pre-train EEG encoders to predict the Fourier amplitude of masked
patches. Here, for every conv frame, the target is the log power of each sensor in each
configured band, averaged over a window (``window`` samples, typically about a second, so
that delta/theta power is defined) centred on the frame; a linear head on the Transformer
output of the *masked* frames regresses it (mean squared error). A sustained state that
changes band power in a topography (listening vs silence, alpha desynchronisation) is
predictable from the unmasked context, so the encoder is rewarded for carrying it; the
frozen random-projection targets (:mod:`.targets`) reward transients instead.

Band signals are made with the real FFT of the whole crop (exact, no filter ringing), squared,
smoothed with a moving average and sampled at the frame centres. Targets are standardised per
(sensor, band) with the batch's own statistics (no gradient), which keeps the differences
between the crops of a batch.
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..conv_geometry import frame_count
from .masked_regression import MaskedRegressionHead, standardise_frames


class BandPowerTargets(MaskedRegressionHead):
    """Per-sensor log band power targets and the linear head that predicts them.

    Parameters
    ----------
    embed_dim : int
        Dimension of the encoder output the head reads.
    in_channels : int
        Number of sensors.
    bands : sequence of (float, float)
        ``(low_hz, high_hz)`` bands; bins with ``low <= f <= high`` are kept.
    sample_rate : float
        Sampling rate of the input (Hz).
    window : int
        Length (samples) of the moving average of the band power around each frame.
    receptive_field, stride : int
        Input window and hop of one frame of the conv encoder (samples): frame ``k`` is
        centred on sample ``k * stride + (receptive_field - 1) / 2``.
    """

    def __init__(
        self,
        embed_dim: int,
        in_channels: int,
        bands: Sequence[Tuple[float, float]],
        sample_rate: float,
        window: int,
        receptive_field: int,
        stride: int,
    ) -> None:
        super().__init__(embed_dim, in_channels * len(bands))
        self.bands = [(float(low), float(high)) for low, high in bands]
        self.sample_rate = float(sample_rate)
        self.window = int(window)
        self.receptive_field = receptive_field
        self.stride = stride

    @torch.no_grad()
    def targets(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Standardised log band power: ``(B, C, T)`` -> ``(B, frames, C * n_bands)``.

        ``frames = (T - receptive_field) // stride + 1``, the conv encoder's frame count;
        features are ordered sensor-major (sensor 0's bands first).
        """
        with torch.autocast(device_type=source.device.type, enabled=False):
            x = source.float()
            if padding_mask is not None:
                x = x * (~padding_mask).unsqueeze(1)
            length = x.size(-1)
            n_frames = frame_count(length, self.receptive_field, self.stride)
            centres = (
                torch.arange(n_frames, device=x.device) * self.stride
                + (self.receptive_field - 1) // 2
            )
            bands = band_signals(x, self.bands, self.sample_rate)  # (B, C * bands, T)
            power = F.avg_pool1d(
                bands.pow(2), self.window, stride=1, padding=self.window // 2,
                count_include_pad=False,
            )[..., :length]
            log_power = power[..., centres].clamp_min(1e-10).log()  # (B, C * bands, frames)
            return standardise_frames(log_power.transpose(1, 2))


def band_signals(
    x: torch.Tensor, bands: Sequence[Tuple[float, float]], sample_rate: float
) -> torch.Tensor:
    """Band-limited copies of ``(B, C, T)`` signals: ``(B, C * len(bands), T)``, sensor-major
    (sensor 0's bands first).

    Made with the real FFT of the whole crop (bins with ``low <= f <= high`` kept; exact, no
    filter ringing).
    """
    length = x.size(-1)
    spectrum = torch.fft.rfft(x, dim=-1)
    freqs = torch.fft.rfftfreq(length, d=1.0 / sample_rate).to(x.device)
    keep = torch.stack(
        [((freqs >= low) & (freqs <= high)) for low, high in bands]
    ).to(spectrum.dtype)  # (bands, F)
    filtered = torch.fft.irfft(spectrum.unsqueeze(2) * keep, n=length, dim=-1)  # (B, C, bands, T)
    return filtered.flatten(1, 2)
