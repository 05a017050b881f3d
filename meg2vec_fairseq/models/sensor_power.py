"""A per-sensor power path into the convolutional encoder's output.

Notes
-----
The first convolution mixes every sensor into ``dim`` channels before any nonlinearity, so
the power of a weak source whose topography lies outside the strong spatial components is
summed with theirs before anything can measure it (docs/pretraining_research.md, rounds 30i
and 31: on a generator setting with weak events outside the top 64 principal components, a
random rotation of the sensors already costs the probe 0.12 and a fresh conv encoder keeps
0.41 of the raw sensors' 0.85). Taking each sensor's power *before* mixing is what MEG
pipelines do for induced activity (sensor-level band power, time-frequency maps per
channel). :class:`SensorPowerPath` computes, for every frame of the conv encoder, each
sensor's log variance over the frame's receptive field, standardises it per sensor with
running statistics (sensor types and gains become offsets, which the mean removes; a sensor
that sensor masking zeroed, or padding, contributes zeros), and adds a learned linear map of
these ``in_channels`` values to the conv encoder's output, before fairseq's layer norm. The
map starts at zero, so an untrained model is the model without the path. With ``bands``,
each sensor's power in each band (the standard MEG bands: a sustained state is often one
rhythm's (de)synchronisation, which broadband power dilutes) enters the map too. With
``whiten``, so does each sensor's frame log power after a spatial whitening of the sensors
(the running covariance of complete training crops, shrunk): in a whitened sensor a weak field
outside the strong components is not summed with them, which sensor-level power alone still
does where a sensor sees both (research log round 38c: a fixed code of whitened powers
probes the fourth setting's events at 0.856 against 0.804 for the own powers; rounds 39-40:
it lifts the fourth and sixth settings' events and keeps every setting's state, so the
shipped configs turn it on; with whitened frame-power targets too it costs three settings'
state). Sensor masking
zeroes different sensors per crop, so each crop is whitened over its kept sensors only
(:func:`.spatial_filter.kept_sensor_whitening`).
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .band_power import band_signals
from .spatial_filter import RunningSensorCovariance, kept_sensor_whitening


def frame_log_power(x: torch.Tensor, receptive_field: int, stride: int
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each sensor's log variance over each frame, and where it is defined.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, T)`` sensors.
    receptive_field, stride : int
        Window and hop of one frame (samples).

    Returns
    -------
    log_power : torch.Tensor
        ``(B, C, frames)``, ``frames = (T - receptive_field) // stride + 1``; 0 where the
        frame has no variance.
    defined : torch.Tensor
        ``(B, C, frames)`` boolean, False where the frame is constant (a zeroed sensor,
        zero padding).
    """
    square = x.pow(2)
    mean = F.avg_pool1d(x, receptive_field, stride=stride)
    variance = F.avg_pool1d(square, receptive_field, stride=stride) - mean.pow(2)
    # float32 rounding leaves a constant frame a variance far below any real signal's
    defined = variance > 1e-12 * square.mean(dim=-1, keepdim=True).clamp_min(1e-30)
    log_power = torch.where(defined, variance.clamp_min(1e-30).log(), torch.zeros_like(variance))
    return log_power, defined


class SensorPowerPath(nn.Module):
    """Each sensor's frame log power, standardised per sensor, mapped linearly to the conv
    features.

    The standardisation uses the batch's statistics in training (per sensor, over every
    frame where the power is defined) and a running average of them otherwise, as
    :class:`torch.nn.BatchNorm1d` does, so a sustained power change (a state lasting longer
    than a crop) is kept; a path that never trained (random-init baselines) uses each batch's
    own statistics, as :class:`~.spatial_filter.PrincipalSubspaceWhitening` does. Either way
    each sensor's gain becomes an offset that the mean removes, so sensor types and units do
    not matter; frames without power (a sensor zeroed by sensor masking, zero padding) give 0.
    Not :class:`torch.nn.BatchNorm1d`: its statistics would count those frames (sensor masking
    zeroes 30 % of the sensors of every training crop), and in eval mode a fresh one assumes
    mean 0 and variance 1.

    Parameters
    ----------
    in_channels : int
        Number of sensors.
    feature_dim : int
        Channels of the conv encoder's output.
    receptive_field, stride : int
        Input window and hop of one frame of the conv encoder (samples).
    momentum : float
        Weight of each training batch in the running statistics.
    bands : sequence of (float, float)
        ``(low_hz, high_hz)`` bands: each sensor's log power in each band (band-limited with
        the crop's FFT, :func:`.band_power.band_signals`) is mapped too, after the unfiltered
        power (``in_channels * (1 + len(bands))`` values per frame). Empty (default): the
        unfiltered power only.
    sample_rate : float or None
        Sampling rate of the input (Hz); needed with ``bands``.
    whiten : float
        If > 0, each whitened sensor's frame log power is mapped too, after the others
        (``in_channels * (2 + len(bands))`` values per frame): the sensors are whitened with
        the running covariance :attr:`whitening_covariance` (which the model's pre-training
        forward updates from complete crops) shrunk by this much (units of the mean
        eigenvalue), each crop over the sensors it kept. 0 (default): off.
    """

    def __init__(self, in_channels: int, feature_dim: int, receptive_field: int,
                 stride: int, momentum: float = 0.1,
                 bands: Sequence[Tuple[float, float]] = (),
                 sample_rate: Optional[float] = None, whiten: float = 0.0) -> None:
        super().__init__()
        if bands and not sample_rate:
            raise ValueError("sensor power bands need the input's sample rate")
        if not whiten >= 0:
            raise ValueError(f"whiten={whiten}: must be >= 0 (0 = off)")
        self.receptive_field = receptive_field
        self.stride = stride
        self.momentum = momentum
        self.bands = [(float(low), float(high)) for low, high in bands]
        self.sample_rate = sample_rate
        self.whiten = float(whiten)
        self.whitening_covariance: Optional[RunningSensorCovariance] = (
            RunningSensorCovariance(in_channels) if whiten > 0 else None
        )
        # one value per sensor and band, and per whitened sensor
        in_channels = in_channels * (1 + len(self.bands) + int(whiten > 0))
        self.mix = nn.Conv1d(in_channels, feature_dim, kernel_size=1, bias=False)
        # zero: a fresh model is the model without the path, and pre-training decides how
        # much per-sensor power enters (a random mix was a strong event feature on its own
        # but pre-training added nothing to it and it cost events where the convolutions
        # learn them; research log round 31f)
        nn.init.zeros_(self.mix.weight)
        self.register_buffer("running_mean", torch.zeros(in_channels))
        self.register_buffer("running_var", torch.ones(in_channels))
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    def log_power(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, T)`` -> each sensor's frame log power, then (with ``bands``) each
        sensor's in each band (sensor-major), then (with ``whiten``) each whitened sensor's,
        and where each is defined: ``(B, C * (1 + n_bands + whitened), frames)`` twice. A
        band's power counts only where the sensor's unfiltered power does (the FFT spreads a
        crop's signal into its zero padding)."""
        log_power, defined = frame_log_power(x, self.receptive_field, self.stride)
        powers, where = [log_power], [defined]
        if self.bands:
            band_power, band_defined = frame_log_power(
                band_signals(x, self.bands, self.sample_rate), self.receptive_field,
                self.stride)
            band_defined &= defined.repeat_interleave(len(self.bands), dim=1)
            powers.append(band_power * band_defined)
            where.append(band_defined)
        if self.whitening_covariance is not None:
            white_power, white_defined = frame_log_power(
                self.whitened(x), self.receptive_field, self.stride)
            powers.append(white_power)
            where.append(white_defined)
        return torch.cat(powers, dim=1), torch.cat(where, dim=1)

    @torch.no_grad()
    def whitened(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` -> the sensors of each crop whitened over the sensors it kept (a
        sensor that is zero throughout a crop, as sensor masking leaves it, stays zero)."""
        energy = x.pow(2).sum(dim=-1)
        kept = energy > 1e-12 * energy.mean(dim=-1, keepdim=True).clamp_min(1e-30)
        covariance = self.whitening_covariance.covariance(x)
        matrix = kept_sensor_whitening(covariance, kept, self.whiten)
        return torch.einsum("bdc,bct->bdt", matrix, x)

    def standardised_log_power(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` -> ``(B, C * (1 + n_bands + whitened), frames)``: the values of
        :meth:`log_power` standardised each on its own (frames without power 0); in training
        mode the running statistics are updated."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            log_power, defined = self.log_power(x.float())
            if self.training or int(self.batches_seen) == 0:
                weight = defined.float()
                count = weight.sum(dim=(0, 2)).clamp_min(1)
                mean = (log_power * weight).sum(dim=(0, 2)) / count
                var = ((log_power - mean[:, None]).pow(2) * weight).sum(dim=(0, 2)) / count
                if self.training:
                    self._update_running_statistics(mean, var, seen=count > 1)
            else:  # float32 even where fairseq's bf16/fp16 mode converted the buffers
                mean, var = self.running_mean.float(), self.running_var.float()
            standardised = (log_power - mean[:, None]) / (var[:, None] + 1e-5).sqrt()
            return standardised * defined

    @torch.no_grad()
    def _update_running_statistics(self, mean: torch.Tensor, var: torch.Tensor,
                                   seen: torch.Tensor) -> None:
        """Move the running statistics toward the batch's (the first batch sets them); a
        sensor with no defined frame in the batch (zeroed throughout) keeps its estimate."""
        first = self.batches_seen == 0  # a tensor test: no device sync per update
        mean = torch.where(first, mean, torch.lerp(self.running_mean.float(), mean, self.momentum))
        var = torch.where(first, var, torch.lerp(self.running_var.float(), var, self.momentum))
        self.running_mean.copy_(torch.where(seen, mean, self.running_mean.float()))
        self.running_var.copy_(torch.where(seen, var, self.running_var.float()))
        self.batches_seen += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` sensors -> ``(B, feature_dim, frames)``, to add to the conv output."""
        standardised = self.standardised_log_power(x)
        return self.mix(standardised.to(self.mix.weight.dtype))
