"""Each frame's sensor power, kept by the convolutional encoder (a retention loss).

Notes
-----
The frozen random-projection targets (:mod:`.targets`) are linear in each frame's waveform,
so a weak oscillatory transient (a burst, induced activity) changes them with its phase and a
code holds little of it; the encoder is never asked for its power, and a stack of random
convolutions loses it (docs/pretraining_research.md, rounds 26e and 30). On the synthetic
benchmark each frame's per-sensor log variance keeps the weak events at the raw sensors'
level while the frame's mean waveform does not. Here a linear head on the *convolutional
encoder's output* (every frame, after its layer norm, before time masking) regresses the log
variance of every sensor over that frame's receptive field, standardised with the batch's
statistics: the convolutions must keep each frame's power per sensor, as a linear read-out of
short-window power per sensor (the standard feature of induced MEG activity) would. Unlike
the masked regression heads, nothing here has to be predicted from context: the target is a
function of the frame the convolutions see (minus the masked sensors, so they also learn to
fill those in from their neighbours). With ``bands``, each sensor's log variance in each band
(band-limited copies from :func:`.band_power.band_signals`), so that a burst is told from a
rhythm at a nearby frequency. With ``with_mean``, each sensor's mean over the frame (its
low-passed waveform) comes first: a slow evoked deflection (an M100-like field) is mostly
a frame's mean, which its variance removes, so power alone cannot tell its sign or shape.
With ``mean_whiten`` those means are taken of the crop-centred sensors after a shrunk spatial
whitening (:func:`.targets.spatial_whitening`): the frame means of the strong slow components
(1/f background) otherwise take the head's width (round 36b), as they dominate an ERF before
noise-covariance whitening; whitened, a weak evoked field outside them weighs as much.
``power_whiten`` adds the powers of the whitened sensors after each sensor's own: in a whitened
sensor a weak field's power is not summed with the strong components' (a fixed 128-wide code
of it probes the fourth setting's events at 0.856 against 0.804 unwhitened), but a sustained
state that changes the strong components' power (alpha desynchronisation) fades there (state
0.804 against 0.932; round 38c), so the sensors' own powers stay. ``power_whiten_weight``
sets the whitened powers' share of the squared error (round 41a: at 0.25 the events gained and
the state lost moved about linearly between weights 0 and 1, a trade, not a gain).
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .band_power import band_signals
from .masked_regression import MaskedRegressionHead, standardise_frames
from .sensor_power import frame_log_power
from .spatial_filter import centre_crops
from .targets import spatial_whitening


class FramePowerTargets(MaskedRegressionHead):
    """Per-frame log variance of each sensor (in each band), and the linear head on the CNN
    output.

    Parameters
    ----------
    feature_dim : int
        Dimension of the convolutional encoder's output (its last layer's channels).
    in_channels : int
        Number of sensors (the target dimension).
    receptive_field, stride : int
        Input window and hop of one frame of the conv encoder (samples).
    bands : sequence of (float, float)
        ``(low_hz, high_hz)`` bands; empty (default): the unfiltered signal, one value per
        sensor.
    sample_rate : float or None
        Sampling rate of the input (Hz); needed with ``bands``.
    with_mean : bool
        Also regress each sensor's mean over the frame (unfiltered), before the powers.
    mean_whiten : float
        With ``with_mean``: shrinkage (units of the mean eigenvalue) of the spatial whitening of
        the crop-centred sensors whose frame means are taken; 0 (default): no whitening.
    power_whiten : float
        If > 0, the log variances of the sensors whitened with this shrinkage are regressed
        too, after each sensor's own; 0 (default): the sensors' own only.
    power_whiten_weight : float
        With ``power_whiten``: the whitened powers' standardised targets are multiplied by the
        square root of this, so that a linear head's squared error on them (and the gradient
        they send into the encoder) is this many times what it is at unit scale; 1 (default):
        the same weight as the own powers.
    """

    def __init__(self, feature_dim: int, in_channels: int, receptive_field: int,
                 stride: int, bands: Sequence[Tuple[float, float]] = (),
                 sample_rate: Optional[float] = None, with_mean: bool = False,
                 mean_whiten: float = 0.0, power_whiten: float = 0.0,
                 power_whiten_weight: float = 1.0) -> None:
        own_dim = in_channels * (max(1, len(bands)) + int(with_mean))
        super().__init__(feature_dim, own_dim + in_channels * max(1, len(bands))
                         * int(power_whiten > 0))
        #: targets before the whitened powers (the means and own powers), which come first
        self.own_dim = own_dim
        if bands and not sample_rate:
            raise ValueError("frame-power bands need the input's sample rate")
        for name, value in (("mean_whiten", mean_whiten), ("power_whiten", power_whiten)):
            if not value >= 0:
                raise ValueError(f"{name}={value}: must be >= 0 (0 = off)")
        if mean_whiten > 0 and not with_mean:
            raise ValueError("mean_whiten > 0 needs with_mean (the means it whitens)")
        if not power_whiten_weight > 0:
            raise ValueError(f"power_whiten_weight={power_whiten_weight}: must be > 0")
        self.receptive_field = receptive_field
        self.stride = stride
        self.bands = [(float(low), float(high)) for low, high in bands]
        self.sample_rate = sample_rate
        self.with_mean = with_mean
        self.mean_whiten = float(mean_whiten)
        self.power_whiten = float(power_whiten)
        self.power_whiten_weight = float(power_whiten_weight)

    @torch.no_grad()
    def targets(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``(B, C, T)`` -> ``(B, frames, C * (max(1, n_bands) * (1 + whitened) +
        with_mean))``: with ``with_mean`` each sensor's frame mean first (``C`` values), then
        the log variance per sensor (sensor-major: sensor 0's bands first), then with
        ``power_whiten`` the same for the whitened sensors, each standardised over the batch
        (the whitened ones then scaled by ``sqrt(power_whiten_weight)``);
        ``frames = (T - receptive_field) // stride + 1`` (the conv encoder's frame count).
        With ``mean_whiten`` the means are those of the whitened, crop-centred sensors.

        Padded samples are zeroed first (they only reach frames that fairseq marks as padding,
        which the loss skips)."""
        with torch.autocast(device_type=source.device.type, enabled=False):
            x = source.float()
            if padding_mask is not None:
                x = x * (~padding_mask).unsqueeze(1)
            means = (F.avg_pool1d(_whitened(x, self.mean_whiten, padding_mask),
                                  self.receptive_field, stride=self.stride)
                     if self.with_mean else None)
            values = [] if means is None else [means]
            values.append(self._log_power(x))
            own = standardise_frames(torch.cat(values, dim=1).transpose(1, 2))
            if self.power_whiten <= 0:
                return own
            whitened = self._log_power(_whitened(x, self.power_whiten, padding_mask))
            whitened = standardise_frames(whitened.transpose(1, 2))
            return torch.cat([own, whitened * self.power_whiten_weight ** 0.5], dim=2)

    def _log_power(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` -> each sensor's frame log variance (in each band, sensor-major):
        ``(B, C * max(1, n_bands), frames)``."""
        if self.bands:
            x = band_signals(x, self.bands, self.sample_rate)
        return frame_log_power(x, self.receptive_field, self.stride)[0]


def _whitened(x: torch.Tensor, shrinkage: float, padding_mask: Optional[torch.Tensor]
              ) -> torch.Tensor:
    """``x`` itself for ``shrinkage`` 0, else its crop-centred sensors spatially whitened with
    the batch's covariance shrunk by ``shrinkage`` (padded samples stay zero)."""
    if shrinkage <= 0:
        return x
    centred, _ = centre_crops(x, padding_mask)
    return spatial_whitening(centred, shrinkage, padding_mask) @ centred
