"""The ``meg2vec`` model: fairseq's wav2vec 2.0 with a multi-channel feature encoder.

Everything that makes wav2vec 2.0 work -- span masking, the Gumbel product quantizer,
sampled negatives, ``get_logits`` / ``get_targets`` / ``get_extra_losses`` for fairseq's
``wav2vec`` criterion, the Transformer with convolutional positional embeddings -- is
fairseq's :class:`~fairseq.models.wav2vec.wav2vec2.Wav2Vec2Model` (a few methods are
extended for the optional objectives below, and are fairseq's when those are off).
Only the front changes: the first convolution reads ``in_channels`` MEG sensors instead
of one audio channel, and the input is ``(batch, channels, time)`` instead of
``(batch, time)``.

Optional objectives (all off by default; with their defaults the model *is* fairseq's
wav2vec 2.0, see ``tests/test_model.py``), each a field of :class:`Meg2VecConfig`:

* pretext heads after *The Brain's Bitter Lesson* (``pretext_band_stop``,
  ``pretext_phase_shift_classes``, ``pretext_amplitude_scale_classes``,
  ``pretext_sensor_fraction``, ``pretext_amplitude_scale_max``, ``pretext_separate_view``;
  :mod:`.pretext`);
* frozen random-projection targets after BEST-RQ (``target_codebook_size``,
  ``target_codebook_dim``, ``target_codebooks``, ``target_crop_norm``, ``target_whiten``;
  :mod:`.targets`), and BEST-RQ's own loss on them, classification of the masked frames'
  codes (``target_code_classification``);
* masked prediction of each sensor's log band power (``target_band_power``,
  ``target_band_power_seconds``; :mod:`.band_power`);
* masked reconstruction of the (whitened) sensors under each frame
  (``target_reconstruction``; :mod:`.reconstruction`);
* data2vec targets: regression of an EMA teacher's averaged top layers
  (``target_teacher_layers``, ``target_teacher_decay``, ``target_teacher_end_decay``,
  ``target_teacher_anneal_updates``; :mod:`.teacher`);
* each frame's per-sensor log power regressed from the convolutional encoder's output, so
  the convolutions keep it (``cnn_frame_power``; :mod:`.frame_power`), and the same targets
  from the Transformer's output at the unmasked frames, so its layers keep it too
  (``encoder_frame_power``); each sensor's frame mean as a target beside its power
  (``frame_power_with_mean``, optionally of the spatially whitened sensors:
  ``frame_mean_whiten``); the spatially whitened sensors' powers too (``frame_power_whiten``,
  with their weight ``frame_power_whiten_weight``, for the convolutions' head alone with
  ``encoder_frame_power_whiten=False``, or read by the Transformer's head from an
  intermediate layer with ``encoder_frame_power_whiten_layer``);
* negatives near the positive in time (``negatives_max_distance``);
* zeroing a random subset of sensors of the context network's input (``mask_sensors_prob``);
* a spatial front end before the first convolution: the whitened top-k principal subspace of
  the sensors (``input_subspace_rank``, ``input_subspace_shrinkage``; :mod:`.spatial_filter`);
* a residual path past each convolution after the first (``conv_residual``);
* each sensor's frame log power, taken before the sensors are mixed, added to the conv
  encoder's output by a learned linear map (``sensor_power_path``; :mod:`.sensor_power`),
  optionally with the spatially whitened sensors' powers (``sensor_power_path_whiten``),
  with the frame-power head reading the convolutions' output before it
  (``cnn_frame_power_before_path``) and fairseq's layer norm of the conv output applied before
  it is added (``sensor_power_path_after_norm``).

They hook into fairseq's own methods (``forward`` wrapped, ``apply_mask``,
``sample_negatives``, ``get_extra_losses``, ``remove_pretraining_modules`` extended, the
quantizer swapped); fairseq's forward itself is not copied.

Extra losses, in the order of :meth:`Meg2VecModel.get_extra_losses` (one
``criterion.loss_weights`` entry each)::

    [diversity (only when there is a quantizer: quantize_targets or target_codebook_size),
     features_pen,
     pretext_band_stop_loss, pretext_phase_shift_loss, pretext_amplitude_scale_loss,
     (only the enabled pretext families, in this order)
     band_power_loss,  (only with target_band_power)
     reconstruction_loss,  (only with target_reconstruction)
     teacher_loss,  (only with target_teacher_layers)
     code_classification_loss,  (only with target_code_classification)
     frame_power_loss,  (only with cnn_frame_power)
     encoder_frame_power_loss]  (only with encoder_frame_power)

Pretext accuracies are in the net output as ``pretext_<name>_accuracy`` (log them with
``criterion.log_keys``). Example, the pretext heads on top of the shipped tiny config (its yaml
lists every field, so plain ``model.`` overrides work; a yaml that does not list a field takes
``+model.``)::

    fairseq-hydra-train --config-dir config/pretraining --config-name meg2vec_tiny \\
      common.user_dir=meg2vec_fairseq task.data=manifests/demo \\
      "model.pretext_band_stop='[(1,4),(4,8),(8,13),(13,30)]'" \\
      model.pretext_phase_shift_classes=4 model.pretext_amplitude_scale_classes=5 \\
      "criterion.loss_weights=[1.0,10,1.0,1.0,1.0,1.0,1.0]" \\
      "criterion.log_keys=[prob_perplexity,code_perplexity,temp,pretext_band_stop_accuracy,\\
    pretext_phase_shift_accuracy,pretext_amplitude_scale_accuracy]"

Each pretext loss is the batch-mean cross-entropy; fairseq's criterion multiplies every extra
loss by the number of masked frames (the contrastive loss is a sum over them), so with weight
1 a pretext loss counts as much as the per-frame contrastive loss.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from fairseq.models import register_model
from fairseq.models.wav2vec.wav2vec2 import (
    ConvFeatureExtractionModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)
from fairseq.modules import GradMultiply
from omegaconf import II
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.nn import functional as F

from ..conv_geometry import conv_frame_geometry
from .band_power import BandPowerTargets
from .frame_power import FramePowerTargets
from .masked_regression import MaskedRegressionHead
from .pretext import PretextTasks, parse_bands
from .reconstruction import SensorReconstructionTargets
from .sensor_power import SensorPowerPath
from .spatial_filter import PrincipalSubspaceWhitening
from .targets import CROP_NORMS, CodeClassificationHead, RandomProjectionQuantizer
from .teacher import TeacherTargets

# Default stack for 250 Hz MEG: total stride 10 -> 25 frames/s (40 ms per frame),
# receptive field 60 samples (240 ms). See docs/pretraining.md (frame rate, crops and masks).
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
    conv_residual: bool = field(
        default=False,
        metadata={
            "help": "add a residual path past each convolution after the first: the block's "
            "input, averaged over the same window and stride as its convolution, is added to "
            "its output, so the first (linear over sensors) layer's features still reach the "
            "CNN output while the deeper random layers are untrained. Needs every layer after "
            "the first to keep its input's dim. False = fairseq's plain stack"
        },
    )
    conv_pos: int = field(
        default=64,
        metadata={"help": "kernel size (in frames) of the convolutional positional embedding"},
    )
    sample_rate: float = field(
        default=II("task.sample_rate"),
        metadata={
            "help": "input sampling rate in Hz (follows task.sample_rate); read only by the "
            "pretext options, which refuse a task at another rate"
        },
    )
    # --- optional objectives; every default below leaves fairseq's wav2vec 2.0 unchanged ---
    pretext_band_stop: str = field(
        default="",
        metadata={
            "help": "band-stop pretext task: a list of (low_hz, high_hz) bands, e.g. "
            "'[(1,4),(4,8),(8,13),(13,30)]'; each sample of a pre-training batch has one band "
            "removed from all sensors (rFFT bins low <= f <= high zeroed) and a linear head on "
            "the time-pooled Transformer output predicts which (one class per band). Needs "
            "0 <= low < high < sample_rate / 2 and at least 2 bands. '' = off"
        },
    )
    pretext_phase_shift_classes: int = field(
        default=0,
        metadata={
            "help": "phase-shift pretext task with K classes: class k rotates the phase of "
            "a random subset of sensors (pretext_sensor_fraction) by 2*pi*k/K (analytic "
            "signal; k=0 is the identity); a head predicts k. 0 = off, else >= 2"
        },
    )
    pretext_amplitude_scale_classes: int = field(
        default=0,
        metadata={
            "help": "amplitude-scale pretext task with K classes: class k multiplies a random "
            "subset of sensors (pretext_sensor_fraction) by the k-th factor of a geometric "
            "grid from 1/pretext_amplitude_scale_max to pretext_amplitude_scale_max (K=5, "
            "max 2: 0.5, 0.71, 1, 1.41, 2); a head predicts k. 0 = off, else >= 2"
        },
    )
    pretext_amplitude_scale_max: float = field(
        default=2.0,
        metadata={"help": "largest factor of the amplitude-scale grid (> 1)"},
    )
    pretext_sensor_fraction: float = field(
        default=0.5,
        metadata={
            "help": "share of sensors, in (0, 1), that the phase-shift and amplitude-scale "
            "transforms touch (a new random subset per sample; at least one sensor)"
        },
    )
    pretext_separate_view: bool = field(
        default=False,
        metadata={
            "help": "run the pretext transforms on a second copy of the batch that only the "
            "pretext heads see (one extra unmasked encoder forward), so that the masked "
            "prediction objective trains on the untransformed input; False = the transformed "
            "input replaces the source of the whole pre-training forward"
        },
    )
    target_codebook_size: int = field(
        default=0,
        metadata={
            "help": "BEST-RQ targets: if > 0 (e.g. 1024), the contrastive targets are codes of "
            "a frozen random codebook of this size, matched to a frozen random projection of "
            "the per-sensor z-scored raw input window under each frame, instead of the learned "
            "Gumbel quantizer of CNN features (replaces it, whatever quantize_targets says). "
            "code_perplexity is the real usage perplexity; prob_perplexity equals it without "
            "gradient, so the diversity loss is a constant. 0 = off"
        },
    )
    target_codebook_dim: int = field(
        default=16,
        metadata={
            "help": "dimension of the random projection and codebook of target_codebook_size"
        },
    )
    target_codebooks: int = field(
        default=1,
        metadata={
            "help": "number of independent random projections and codebooks of "
            "target_codebook_size (BEST-RQ's multiple codebooks): every masked frame's "
            "contrastive target is the concatenation of its code vectors, one per codebook, so "
            "the targets also follow components weaker than the few that dominate one "
            "projection; code_perplexity is the mean over codebooks. 1 = a single codebook"
        },
    )
    target_crop_norm: str = field(
        default="zscore",
        metadata={
            "help": "per-sensor normalisation of each crop before the random projection of "
            "target_codebook_size: 'zscore' (the codes ignore each sensor's power in the crop) "
            "or 'center' (mean removed only: segments are z-scored per recording by "
            "make_manifest, so the codes also follow sustained changes of sensor power; "
            "the shipped configs use it)"
        },
    )
    target_whiten: float = field(
        default=0.0,
        metadata={
            "help": "if > 0, spatially whiten the sensors (after target_crop_norm) with the "
            "batch's sensor covariance before the random projection of target_codebook_size, "
            "adding this multiple of the mean eigenvalue to every eigenvalue (shrinkage; 1.0 "
            "evens out the strong components without raising the noise floor), so that the "
            "codes do not only follow the few strongest spatial components. 0 = off"
        },
    )
    target_band_power: str = field(
        default="",
        metadata={
            "help": "spectral targets (LaBraM-style): a list of (low_hz, high_hz) bands, e.g. "
            "'[(1,4),(4,8),(8,13),(13,30)]'; a linear head on the Transformer output of each "
            "masked frame regresses the log power of every sensor in every band around that "
            "frame (target_band_power_seconds), an extra loss after the pretext losses. Needs "
            "0 <= low < high < sample_rate / 2. '' = off"
        },
    )
    target_band_power_seconds: float = field(
        default=1.0,
        metadata={
            "help": "length (s) of the moving average of the band power around each frame "
            "for target_band_power (long enough to define the lowest band's power)"
        },
    )
    input_subspace_rank: int = field(
        default=0,
        metadata={
            "help": "if > 0, a spatial front end projects the sensors onto this many principal "
            "directions of their covariance (a running average over training batches, saved "
            "in checkpoints), whitened with shrinkage input_subspace_shrinkage, before the "
            "first convolution (MEG 'virtual sensors'; keeps weaker components that a first "
            "convolution on raw sensors mixes away). 0 = off"
        },
    )
    input_subspace_shrinkage: float = field(
        default=1.0,
        metadata={
            "help": "shrinkage of input_subspace_rank's whitening, in units of the mean "
            "eigenvalue (>= 0)"
        },
    )
    target_reconstruction: bool = field(
        default=False,
        metadata={
            "help": "masked reconstruction: a linear head on the Transformer output of each "
            "masked frame regresses the sensors under that frame (each centred per crop, "
            "spatially whitened with target_whiten's shrinkage when it is > 0, averaged over "
            "the frame's receptive field, standardised with the batch's statistics); an extra "
            "loss after the band-power loss (add its criterion.loss_weights entry)"
        },
    )
    target_teacher_layers: int = field(
        default=0,
        metadata={
            "help": "data2vec targets: if > 0, a teacher copy of the Transformer (an exponential "
            "moving average of the student's) reads the student's CNN features before time "
            "masking (after sensor masking, as the student), and a linear head on "
            "the student's output of each masked frame regresses the mean of the teacher's last "
            "this-many layers (feed-forward outputs, each instance-normalised over time); an "
            "extra loss after the reconstruction loss (add its criterion.loss_weights entry). "
            "1..encoder_layers, 0 = off"
        },
    )
    target_code_classification: bool = field(
        default=False,
        metadata={
            "help": "BEST-RQ's loss on the random-projection targets (needs "
            "target_codebook_size > 0): a linear head on the Transformer output of each masked "
            "frame classifies its code among all target_codebook_size codes of each of the "
            "target_codebooks codebooks (cross-entropy), as an extra loss after the teacher "
            "loss (add its criterion.loss_weights entry); its accuracy is in the net output as "
            "code_classification_accuracy (criterion.log_keys). The contrastive loss stays"
        },
    )
    cnn_frame_power: bool = field(
        default=False,
        metadata={
            "help": "a linear head on the convolutional encoder's output (every frame, after "
            "its layer norm, before time masking) regresses the log variance of every sensor "
            "over that frame's receptive field (standardised with the batch's statistics; "
            "from the full input, before sensor masking), so that the convolutions keep each "
            "frame's power per sensor, which the waveform-linear random-projection codes do "
            "not ask for; an extra loss after the code-classification loss (add its "
            "criterion.loss_weights entry)"
        },
    )
    cnn_frame_power_bands: str = field(
        default="",
        metadata={
            "help": "bands for cnn_frame_power, e.g. '[(1,8),(8,13),(13,30),(30,45)]': the "
            "head regresses each sensor's log variance in each band per frame (band-limited "
            "with the crop's FFT), so the convolutions keep which rhythm carries the power. "
            "Needs 0 <= low < high < sample_rate / 2. '' = the unfiltered signal, one value "
            "per sensor"
        },
    )
    encoder_frame_power: bool = field(
        default=False,
        metadata={
            "help": "with cnn_frame_power: a second linear head regresses the same per-frame "
            "sensor log power from the Transformer's output at the unmasked frames (wav2vec "
            "2.0 puts no loss there, yet features are read from those outputs), so the "
            "Transformer keeps each frame's power per sensor that the convolutions keep; an "
            "extra loss after the frame-power loss (add its criterion.loss_weights entry)"
        },
    )
    frame_power_with_mean: bool = field(
        default=False,
        metadata={
            "help": "with cnn_frame_power: the frame-power targets also hold each sensor's "
            "mean over the frame (its low-passed waveform, standardised the same way), "
            "before the log powers; both frame-power heads (cnn_frame_power, "
            "encoder_frame_power) regress it. A slow evoked deflection is mostly a frame's "
            "mean, which the variance removes. No new loss"
        },
    )
    frame_mean_whiten: float = field(
        default=0.0,
        metadata={
            "help": "with frame_power_with_mean: if > 0, the frame means are those of the "
            "crop-centred sensors after a spatial whitening with the batch's sensor "
            "covariance, shrunk by this much (units of its mean eigenvalue), so that the means "
            "of the strong slow components do not take the heads' width from weak evoked "
            "fields outside them. 0 = unwhitened means"
        },
    )
    frame_power_whiten: float = field(
        default=0.0,
        metadata={
            "help": "with cnn_frame_power: if > 0, the frame-power targets also hold the log "
            "variances of the crop-centred sensors after a spatial whitening with the batch's "
            "sensor covariance, shrunk by this much (units of its mean eigenvalue), after each "
            "sensor's own: in a whitened sensor a weak field's power is not summed with the "
            "strong components'. Both frame-power heads regress them (the convolutions' "
            "only with encoder_frame_power_whiten=false: the shipped configs since round 43, "
            "0.1). 0 = own powers only"
        },
    )
    frame_power_whiten_weight: float = field(
        default=1.0,
        metadata={
            "help": "with frame_power_whiten: the whitened powers' weight in both frame-power "
            "heads' squared error, relative to the sensors' own powers (their standardised "
            "targets are scaled by its square root). Must be > 0. Round 41a (0.25): events "
            "and state moved about linearly between weights 0 and 1, a trade, not a gain"
        },
    )
    encoder_frame_power_whiten: bool = field(
        default=True,
        metadata={
            "help": "with frame_power_whiten and encoder_frame_power: the Transformer's "
            "frame-power head regresses the whitened sensors' powers too; false: only the "
            "convolutions' head does, and the Transformer's regresses the means and own "
            "powers, so the width of the output that features are read from is not asked "
            "for the whitened read-out. Round 41c: keeps most of the state the whitened "
            "targets cost with both heads (fifth generator setting 0.894 vs 0.819) and most "
            "of their events gain (fourth setting 0.839 vs 0.811 without them)"
        },
    )
    encoder_frame_power_whiten_layer: int = field(
        default=0,
        metadata={
            "help": "with frame_power_whiten, encoder_frame_power and "
            "encoder_frame_power_whiten: if > 0, the Transformer's frame-power head reads the "
            "whitened sensors' powers from the output of this Transformer layer (1-based, "
            "below encoder_layers) and the means and own powers from the last layer, so the "
            "layers above it are not asked to hold the whitened read-out. The loss stays one "
            "entry (the mean over all targets, as one head on one layer would score it). "
            "0 = every target from the last layer. Round 42a (layer 2 of 4, fourth generator "
            "setting): events 0.868 as with both heads on the last layer, state 0.944 vs "
            "0.987 without whitened targets; round 42e: the state is already lower at the "
            "conv output (0.940 vs 0.961 with the convolutions' head alone), so the "
            "Transformer's whitened loss costs it through its gradient, whichever layer"
        },
    )
    sensor_power_path: bool = field(
        default=False,
        metadata={
            "help": "add each sensor's log variance over every frame's receptive field, "
            "standardised per sensor (batch statistics in training, their running average "
            "otherwise, as BatchNorm) and mapped by a learned linear layer "
            "(in_channels -> the conv output's dim), to the convolutional encoder's output "
            "before its layer norm: power taken per sensor before the first convolution mixes "
            "the sensors, so a weak source outside the strong spatial components keeps its "
            "power change (sensor-level power, as MEG pipelines take for induced activity)"
        },
    )
    sensor_power_path_bands: str = field(
        default="",
        metadata={
            "help": "with sensor_power_path: each sensor's frame log power in these bands "
            "too, e.g. '[(1,8),(8,13),(13,30),(30,45)]' (band-limited with the crop's FFT), "
            "standardised per sensor and band and mapped with the unfiltered power by the "
            "same linear layer, so that a change of one rhythm's power (alpha "
            "desynchronisation) is not diluted by the others. Needs 0 <= low < high < "
            "sample_rate / 2. '' = the unfiltered power only. Round 34c (four bands, "
            "1-45 Hz): state 0.956 vs 0.971 on the first generator setting, unchanged on the "
            "fourth, events a little lower; so off"
        },
    )
    sensor_power_path_whiten: float = field(
        default=0.0,
        metadata={
            "help": "with sensor_power_path: if > 0, the path also maps each sensor's frame "
            "log power after a spatial whitening of the sensors with the running covariance "
            "of complete training crops, shrunk by this much (units of its mean eigenvalue); "
            "each crop is whitened over the sensors that sensor masking kept. In a whitened "
            "sensor a weak field outside the strong components is not summed with them. "
            "Not with input_subspace_rank (which whitens the input already). 0 = off"
        },
    )
    sensor_power_path_after_norm: bool = field(
        default=False,
        metadata={
            "help": "with sensor_power_path: fairseq's layer norm of the conv output is "
            "applied to the convolutions' output before the path is added, not to their sum, "
            "so a frame's path magnitude does not rescale that frame's conv features (the "
            "model's layer_norm becomes an identity; the norm lives in the feature extractor). "
            "fairseq's features_pen then sees normalised features. Round 33c: state up "
            "(0.982 vs 0.971), events down on a weak-event setting (0.725 vs 0.782), the "
            "contrastive task stalled; with features_pen's weight at 0 (round 33d) training is "
            "healthy and both tasks are within about a spread of the shipped recipe; so off"
        },
    )
    cnn_frame_power_before_path: bool = field(
        default=False,
        metadata={
            "help": "with cnn_frame_power and sensor_power_path: the frame-power head reads "
            "the convolutions' own output (through the same layer norm), before the power "
            "path is added, so the convolutions must keep each sensor's power themselves "
            "(reading after it, the path hands the head its target: loss 0.27 vs 1.0). "
            "Round 33: both probes lower with it (state 0.955 vs 0.971 on the first "
            "generator setting, events 0.72 vs 0.78 on the fourth), so off"
        },
    )
    target_teacher_decay: float = field(
        default=0.999,
        metadata={"help": "EMA decay of target_teacher_layers' teacher at the start, in (0, 1]"},
    )
    target_teacher_end_decay: float = field(
        default=0.9999,
        metadata={
            "help": "EMA decay of the teacher after target_teacher_anneal_updates (linear "
            "from target_teacher_decay), in [target_teacher_decay, 1]"
        },
    )
    target_teacher_anneal_updates: int = field(
        default=30000,
        metadata={
            "help": "updates over which the teacher's decay goes from target_teacher_decay to "
            "target_teacher_end_decay (data2vec: 30000 for the base model; >= 0)"
        },
    )
    negatives_max_distance: int = field(
        default=0,
        metadata={
            "help": "if > 0, each negative is a masked frame at most this many frames (of the "
            "original sequence, not of the masked subsequence) from its positive, never the "
            "positive itself; drawn uniformly among such frames, or among the nearest masked "
            "frames when none is that close. 0 = fairseq's uniform sampling over the crop"
        },
    )
    mask_sensors_prob: float = field(
        default=0.0,
        metadata={
            "help": "share of sensors, in [0, 1), zeroed at random in each sample of a "
            "pre-training batch, in training mode only. The context network reads the masked "
            "input; the targets too with the Gumbel quantizer (same CNN), but not with "
            "target_codebook_size > 0 (codes of the unmasked input). 0 = off"
        },
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
    spatial_filter : nn.Module or None
        Applied to the ``(B, C, T)`` sensors before the first convolution
        (:class:`~.spatial_filter.PrincipalSubspaceWhitening`); None = none.
    residual : bool
        Add each block's input, averaged over its convolution's window and stride (same
        output length), to the output of every block after the first.
    power_path : nn.Module or None
        Maps the ``(B, C, T)`` input (after ``spatial_filter``) to ``(B, D, T')``, added to
        the last block's output (:class:`~.sensor_power.SensorPowerPath`); None = none.
    """

    def __init__(
        self,
        in_channels: int,
        conv_layers: List[Tuple[int, int, int]],
        mode: str = "default",
        conv_bias: bool = False,
        dropout: float = 0.0,
        spatial_filter: Optional[nn.Module] = None,
        residual: bool = False,
        power_path: Optional[nn.Module] = None,
    ) -> None:
        super().__init__(conv_layers=conv_layers, dropout=dropout, mode=mode, conv_bias=conv_bias)
        if residual:
            for index in range(1, len(conv_layers)):
                if conv_layers[index][0] != conv_layers[index - 1][0]:
                    raise ValueError(
                        f"conv_residual=True: convolution {index + 1} of conv_feature_layers "
                        f"maps dim {conv_layers[index - 1][0]} to {conv_layers[index][0]}; a "
                        "residual path needs every layer after the first to keep its dim"
                    )
        # (kernel_size, stride) of each residual path's average; None for the first block
        self.residual_windows: List[Optional[Tuple[int, int]]] = [
            (kernel, stride) if residual and index > 0 else None
            for index, (_dim, kernel, stride) in enumerate(conv_layers)
        ]
        self.in_channels = in_channels
        dim, kernel_size, stride = conv_layers[0]
        first_conv = nn.Conv1d(in_channels, dim, kernel_size, stride=stride, bias=conv_bias)
        nn.init.kaiming_normal_(first_conv.weight)
        self.conv_layers[0][0] = first_conv  # each block is Sequential(conv, dropout, ...)
        self.spatial_filter = spatial_filter
        self.power_path = power_path
        self.stack_output = nn.Identity()  # no parameters: checkpoints unchanged
        # (B, T, D) norm of the convolutions' output before the path is added; None: none
        # (Meg2VecModel moves fairseq's layer norm here with sensor_power_path_after_norm)
        self.output_norm: Optional[nn.Module] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, T)`` sensors to ``(B, D, T')`` features."""
        if x.dim() != 3 or x.size(1) != self.in_channels:
            raise ValueError(
                f"meg2vec expects input of shape (batch, {self.in_channels}, time), "
                f"got {tuple(x.shape)}"
            )
        if self.spatial_filter is not None:
            x = self.spatial_filter(x)
        sensors = x
        for conv, window in zip(self.conv_layers, self.residual_windows):
            if window is None:
                x = conv(x)
            else:  # the average over the conv's own window has the conv's output length
                x = conv(x) + F.avg_pool1d(x, kernel_size=window[0], stride=window[1])
        if self.power_path is not None:
            x = self.stack_output(x)  # a hook point: the convolutions' own output
            if self.output_norm is not None:
                x = self.output_norm(x.transpose(1, 2)).transpose(1, 2)
            x = x + self.power_path(sensors)  # same frames: the stack's receptive field/stride
        return x


@register_model("meg2vec", dataclass=Meg2VecConfig)
class Meg2VecModel(Wav2Vec2Model):
    """wav2vec 2.0 for multi-channel MEG input of shape ``(batch, in_channels, time)``.

    ``forward(source, padding_mask=None, ...)`` takes ``source`` of shape ``(B, C, T)``
    and an optional ``(B, T)`` boolean ``padding_mask`` (True = padded sample); all
    outputs are those of :class:`Wav2Vec2Model`, plus ``pretext_<name>_loss`` and
    ``pretext_<name>_accuracy`` for each enabled pretext family in a pre-training forward
    (``mask=True``, ``features_only=False``). See the module docstring for the options.
    """

    cfg: Meg2VecConfig

    def __init__(self, cfg: Meg2VecConfig) -> None:
        super().__init__(cfg)
        bands = validate_objectives(cfg)  # before building anything from the options
        path_bands = parse_bands(
            getattr(cfg, "sensor_power_path_bands", "") or "", "sensor_power_path_bands"
        )
        self.feature_extractor = MultiChannelConvFeatureExtractor(
            in_channels=cfg.in_channels,
            conv_layers=eval(cfg.conv_feature_layers),  # fairseq's own format for the stack
            mode=cfg.extractor_mode,
            conv_bias=cfg.conv_bias,
            residual=getattr(cfg, "conv_residual", False),  # absent in older checkpoints
            spatial_filter=(
                PrincipalSubspaceWhitening(
                    cfg.in_channels,
                    cfg.input_subspace_rank,
                    shrinkage=cfg.input_subspace_shrinkage,
                )
                if getattr(cfg, "input_subspace_rank", 0) > 0
                else None
            ),
            power_path=(
                SensorPowerPath(
                    cfg.in_channels,
                    self.embed,  # fairseq's width of the conv output
                    *conv_frame_geometry(cfg.conv_feature_layers),
                    bands=path_bands,
                    sample_rate=_config_sample_rate(cfg) if path_bands else None,
                    whiten=float(getattr(cfg, "sensor_power_path_whiten", 0.0)),
                )
                if getattr(cfg, "sensor_power_path", False)  # absent in older checkpoints
                else None
            ),
        )
        if getattr(cfg, "sensor_power_path_after_norm", False):
            # fairseq's norm of the conv output, moved before the path (one module, one key)
            self.feature_extractor.output_norm = self.layer_norm
            self.layer_norm = nn.Identity()
        self._mask_indices: Optional[torch.Tensor] = None  # of the current forward
        self.pretext: Optional[PretextTasks] = None
        if pretext_enabled(cfg):
            self.pretext = PretextTasks(
                embed_dim=cfg.encoder_embed_dim,
                sample_rate=float(cfg.sample_rate) if bands else None,
                bands=bands,
                phase_classes=cfg.pretext_phase_shift_classes,
                amplitude_classes=cfg.pretext_amplitude_scale_classes,
                amplitude_max=cfg.pretext_amplitude_scale_max,
                sensor_fraction=cfg.pretext_sensor_fraction,
            )
        self.band_power: Optional[BandPowerTargets] = None
        power_bands = parse_bands(getattr(cfg, "target_band_power", ""), "target_band_power")
        if power_bands:
            receptive_field, stride = conv_frame_geometry(cfg.conv_feature_layers)
            rate = _config_sample_rate(cfg)
            self.band_power = BandPowerTargets(
                embed_dim=cfg.encoder_embed_dim,
                in_channels=cfg.in_channels,
                bands=power_bands,
                sample_rate=rate,
                window=max(1, int(round(cfg.target_band_power_seconds * rate))),
                receptive_field=receptive_field,
                stride=stride,
            )
        self.reconstruction: Optional[SensorReconstructionTargets] = None
        if getattr(cfg, "target_reconstruction", False):
            receptive_field, stride = conv_frame_geometry(cfg.conv_feature_layers)
            self.reconstruction = SensorReconstructionTargets(
                embed_dim=cfg.encoder_embed_dim,
                in_channels=cfg.in_channels,
                receptive_field=receptive_field,
                stride=stride,
                whiten=getattr(cfg, "target_whiten", 0.0),
            )
        self.teacher: Optional[TeacherTargets] = None
        if getattr(cfg, "target_teacher_layers", 0) > 0:
            self.teacher = TeacherTargets(
                self.encoder,
                cfg,
                embed_dim=cfg.encoder_embed_dim,
                top_layers=cfg.target_teacher_layers,
                decay=cfg.target_teacher_decay,
                end_decay=cfg.target_teacher_end_decay,
                anneal_updates=cfg.target_teacher_anneal_updates,
            )
        self._teacher_input: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None
        if cfg.target_codebook_size > 0:
            receptive_field, stride = conv_frame_geometry(cfg.conv_feature_layers)
            self.quantizer = RandomProjectionQuantizer(
                in_channels=cfg.in_channels,
                receptive_field=receptive_field,
                stride=stride,
                codebook_size=cfg.target_codebook_size,
                codebook_dim=cfg.target_codebook_dim,
                crop_norm=getattr(cfg, "target_crop_norm", "zscore"),
                whiten=getattr(cfg, "target_whiten", 0.0),
                codebooks=getattr(cfg, "target_codebooks", 1),
            )
            final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
            target_dim = self.quantizer.codebooks * cfg.target_codebook_dim
            self.project_q = nn.Linear(target_dim, final_dim)  # trainable
        self.code_head: Optional[CodeClassificationHead] = None
        if getattr(cfg, "target_code_classification", False):
            self.code_head = CodeClassificationHead(
                cfg.encoder_embed_dim, cfg.target_codebook_size, self.quantizer.codebooks
            )
        self.frame_power: Optional[FramePowerTargets] = None
        if getattr(cfg, "cnn_frame_power", False):
            receptive_field, stride = conv_frame_geometry(cfg.conv_feature_layers)
            frame_bands = parse_bands(
                getattr(cfg, "cnn_frame_power_bands", ""), "cnn_frame_power_bands"
            )
            self.frame_power = FramePowerTargets(
                feature_dim=self.embed,  # fairseq's width of the conv output
                in_channels=cfg.in_channels,
                receptive_field=receptive_field,
                stride=stride,
                bands=frame_bands,
                sample_rate=_config_sample_rate(cfg) if frame_bands else None,
                with_mean=bool(getattr(cfg, "frame_power_with_mean", False)),
                mean_whiten=float(getattr(cfg, "frame_mean_whiten", 0.0)),
                power_whiten=float(getattr(cfg, "frame_power_whiten", 0.0)),
                power_whiten_weight=float(getattr(cfg, "frame_power_whiten_weight", 1.0)),
            )
        self.encoder_frame_power: Optional[MaskedRegressionHead] = None
        # the whitened powers' part of it when read from an intermediate layer
        self.encoder_frame_power_whitened: Optional[MaskedRegressionHead] = None
        if getattr(cfg, "encoder_frame_power", False):
            whiten_layer = getattr(cfg, "encoder_frame_power_whiten_layer", 0)
            all_targets = (getattr(cfg, "encoder_frame_power_whiten", True)
                           and not whiten_layer > 0)
            self.encoder_frame_power = MaskedRegressionHead(
                cfg.encoder_embed_dim,
                self.frame_power.head.out_features if all_targets else self.frame_power.own_dim,
            )
            if whiten_layer > 0:
                self.encoder_frame_power_whitened = MaskedRegressionHead(
                    cfg.encoder_embed_dim,
                    self.frame_power.head.out_features - self.frame_power.own_dim,
                )

    @classmethod
    def build_model(cls, cfg: Meg2VecConfig, task=None) -> "Meg2VecModel":
        """Build a new model instance (fairseq entry point).

        Raises
        ------
        ValueError
            On an invalid objective option, or when a pretext or band-power option is on and
            the task's ``sample_rate`` differs from the model's (a checkpoint trained at
            another rate).
        """
        task_cfg = getattr(task, "cfg", None)
        task_rate = getattr(task_cfg, "sample_rate", None)
        in_hz = (
            pretext_enabled(cfg)
            or bool(getattr(cfg, "target_band_power", ""))
            or bool(getattr(cfg, "cnn_frame_power", False)
                    and getattr(cfg, "cnn_frame_power_bands", ""))
            or bool(getattr(cfg, "sensor_power_path", False)
                    and getattr(cfg, "sensor_power_path_bands", ""))
        )
        if in_hz and task_rate is not None:
            model_rate = _config_sample_rate(cfg)
            if float(task_rate) != model_rate:
                raise ValueError(
                    f"model.sample_rate={model_rate:g} but task.sample_rate={float(task_rate):g}: "
                    "the pretext / band-power options (bands in Hz) were set for another "
                    "sampling rate"
                )
        return cls(cfg)

    def forward(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        """fairseq's forward, with the enabled objectives around it.

        In a pre-training forward (``mask`` and not ``features_only``), in this order: the
        pretext transforms replace ``source`` (training and validation), or with
        ``pretext_separate_view`` make a second view; the random-projection targets are
        computed from ``source``; in training mode, sensors are zeroed
        (``mask_sensors_prob``); then :meth:`Wav2Vec2Model.forward` runs, its encoder output
        captured by a forward hook for the pretext heads, or the pretext heads read an
        unmasked ``features_only`` forward of the separate view. Other calls (feature
        extraction) are fairseq's forward unchanged.
        """
        try:
            path = self.feature_extractor.power_path
            for statistics in (
                self.feature_extractor.spatial_filter,
                None if path is None else path.whitening_covariance,
            ):
                if statistics is not None and self.training and mask and not features_only:
                    # statistics of the crops as they come, before masking or a pretext view
                    statistics.update(source, padding_mask)
            if not (mask and not features_only and self._objectives_on()):
                return super().forward(
                    source, padding_mask, mask=mask, features_only=features_only, **kwargs
                )
            labels: Dict[str, torch.Tensor] = {}
            view: Optional[torch.Tensor] = None
            if self.pretext is not None:
                transformed, labels = self.pretext.transform(source, padding_mask)
                if self.cfg.pretext_separate_view:
                    view = transformed
                else:
                    source = transformed
            if isinstance(self.quantizer, RandomProjectionQuantizer):
                self.quantizer.stash(source, padding_mask)  # before sensor masking: full input
            # regression targets from the full input too: (loss name, head, targets)
            regressions = [
                (name, head, head.targets(source, padding_mask))
                for name, head in self._regression_heads()
            ]
            frame_power_targets = (
                self.frame_power.targets(source, padding_mask)
                if self.frame_power is not None
                else None
            )
            if self.training and self.cfg.mask_sensors_prob > 0:
                source = mask_sensors(source, self.cfg.mask_sensors_prob)
            captured: List[torch.Tensor] = []
            handle = None
            if (
                (labels and view is None)
                or regressions
                or self.teacher is not None
                or self.code_head is not None
                or self.encoder_frame_power is not None
            ):
                handle = self.encoder.register_forward_hook(
                    lambda _module, _args, output: captured.append(output[0])
                )
            conv_output: List[torch.Tensor] = []
            conv_handle = None
            if self.frame_power is not None:
                conv_handle = self._frame_power_input_hook(conv_output)
            layer_output: List[torch.Tensor] = []
            layer_handles = []
            if self.encoder_frame_power_whitened is not None:
                layer_handles = self._layer_output_hooks(
                    self.cfg.encoder_frame_power_whiten_layer, layer_output
                )
            try:
                result = super().forward(
                    source, padding_mask, mask=mask, features_only=False, **kwargs
                )
            finally:
                for hook in (handle, conv_handle, *layer_handles):
                    if hook is not None:
                        hook.remove()
            if view is not None:  # the heads read the transformed view, never masked
                encoded = super().forward(view, padding_mask, mask=False, features_only=True)
                result.update(self.pretext(encoded["x"], encoded["padding_mask"], labels))
            elif labels:
                result.update(self.pretext(captured[-1], result["padding_mask"], labels))
            for name, head, targets in regressions:
                result[f"{name}_loss"] = head.loss(captured[-1], self._mask_indices, targets)
            if self.teacher is not None:
                targets = self.teacher.targets(*self._teacher_input)
                result["teacher_loss"] = self.teacher.loss(
                    captured[-1], self._mask_indices, targets
                )
            if self.code_head is not None:
                loss, accuracy = self.code_head.loss(
                    captured[-1], self._mask_indices, self.quantizer.stashed_codes
                )
                result["code_classification_loss"] = loss
                result["code_classification_accuracy"] = accuracy
            if self.frame_power is not None:
                features = conv_output[0]  # (B, T, C), before fairseq's crop to a multiple
                frame_padding = result.get("padding_mask")
                if frame_padding is None:
                    frames = features.new_ones(features.shape[:2], dtype=torch.bool)
                else:
                    features, frames = features[:, : frame_padding.size(1)], ~frame_padding
                result["frame_power_loss"] = self.frame_power.loss(
                    features, frames, frame_power_targets
                )
            if self.encoder_frame_power is not None:
                result["encoder_frame_power_loss"] = self._encoder_frame_power_loss(
                    captured[-1], layer_output, result.get("padding_mask"),
                    frame_power_targets,
                )
            return result
        finally:
            self._mask_indices = None
            self._teacher_input = None
            if isinstance(self.quantizer, RandomProjectionQuantizer):
                self.quantizer.clear()

    def _frame_power_input_hook(
        self, captured: List[torch.Tensor]
    ) -> torch.utils.hooks.RemovableHandle:
        """Register the hook that captures the frame-power head's input, ``(B, T, C)``.

        fairseq's layer norm of the conv output; with ``cnn_frame_power_before_path``, the
        same layer norm of the convolutions' output before the power path is added, scaled
        in its gradient by ``feature_grad_mult`` as fairseq scales the extractor's output.
        """
        extractor = self.feature_extractor
        if not (getattr(self.cfg, "cnn_frame_power_before_path", False)
                and extractor.power_path is not None):
            # a copy: without post_extract_proj and in eval mode (no dropout copy), fairseq's
            # apply_mask writes the mask embedding into this very tensor
            return self.layer_norm.register_forward_hook(
                lambda _module, _args, output: captured.append(output.clone())
            )

        def normalise(_module, _args, output: torch.Tensor) -> None:
            if self.feature_grad_mult != 1.0:
                output = GradMultiply.apply(output, self.feature_grad_mult)
            norm = self.layer_norm if extractor.output_norm is None else extractor.output_norm
            captured.append(norm(output.transpose(1, 2)))

        return extractor.stack_output.register_forward_hook(normalise)

    def _layer_output_hooks(
        self, layer: int, captured: List[torch.Tensor]
    ) -> List[torch.utils.hooks.RemovableHandle]:
        """Hooks on the first ``layer`` Transformer layers, each appending its output as
        ``(B, T, C)``: the last one appended is the residual stream after layer ``layer``,
        or after the deepest of them that ran when LayerDrop skipped it."""
        return [
            block.register_forward_hook(
                lambda _module, _args, output: captured.append(output[0].transpose(0, 1))
            )
            for block in self.encoder.layers[:layer]
        ]

    def _encoder_frame_power_loss(
        self,
        encoded: torch.Tensor,
        layer_output: List[torch.Tensor],
        padding_mask: Optional[torch.Tensor],
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """The Transformer's frame-power loss at the unmasked frames.

        Its head scores the targets of its width (all, or those before the whitened
        powers); with ``encoder_frame_power_whiten_layer`` the whitened powers are scored
        from that layer's output (``layer_output[-1]``; the last layer's when LayerDrop
        skipped every layer up to it), and the two errors are averaged over all targets.
        """
        frames = self._unmasked_frames(encoded, padding_mask)
        own = self.encoder_frame_power.head.out_features
        loss = self.encoder_frame_power.loss(encoded, frames, targets[..., :own])
        if self.encoder_frame_power_whitened is None:
            return loss
        # fairseq pads the layers' input to required_seq_len_multiple: cut to the output's
        intermediate = layer_output[-1][:, : encoded.size(1)] if layer_output else encoded
        whitened = self.encoder_frame_power_whitened.head.out_features
        whitened_loss = self.encoder_frame_power_whitened.loss(
            intermediate, frames, targets[..., own:]
        )
        return (loss * own + whitened_loss * whitened) / (own + whitened)

    def _unmasked_frames(
        self, encoded: torch.Tensor, padding_mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """``(B, T')`` boolean, True at the frames that were neither time-masked nor padding."""
        frames = encoded.new_ones(encoded.shape[:2], dtype=torch.bool)
        if self._mask_indices is not None:
            frames &= ~self._mask_indices
        if padding_mask is not None:
            frames &= ~padding_mask
        return frames

    def _regression_heads(self) -> List[Tuple[str, nn.Module]]:
        """The enabled masked-regression objectives, in extra-loss order."""
        heads = [("band_power", self.band_power), ("reconstruction", self.reconstruction)]
        return [(name, head) for name, head in heads if head is not None]

    def _objectives_on(self) -> bool:
        cfg = self.cfg
        return (
            self.pretext is not None
            or isinstance(self.quantizer, RandomProjectionQuantizer)
            or cfg.negatives_max_distance > 0
            or cfg.mask_sensors_prob > 0
            or bool(self._regression_heads())
            or self.teacher is not None
            or self.frame_power is not None
        )

    def apply_mask(self, x, padding_mask, mask_indices=None, mask_channel_indices=None):
        """fairseq's ``apply_mask``, AMP-safe, keeping the mask indices for the objectives.

        Under autocast the features are fp16/bf16 while ``mask_emb`` is float32, and
        fairseq's ``index_put`` refuses mixed dtypes: run it in ``mask_emb``'s dtype and
        cast back (a no-op in float32).
        """
        dtype = x.dtype
        if self.teacher is not None:  # the teacher reads the same features, unmasked
            # (a copy: fairseq writes mask_emb into x in place)
            self._teacher_input = (x.detach().clone(), padding_mask)
        x, mask_indices = super().apply_mask(
            x.to(self.mask_emb.dtype),
            padding_mask,
            mask_indices=mask_indices,
            mask_channel_indices=mask_channel_indices,
        )
        self._mask_indices = mask_indices
        if isinstance(self.quantizer, RandomProjectionQuantizer):
            self.quantizer.set_mask(mask_indices)
        return x.to(dtype), mask_indices

    def sample_negatives(self, y, num, padding_count=None):
        """fairseq's uniform negatives, or negatives near the positive in time.

        With ``negatives_max_distance = D > 0``: ``y`` holds the ``M`` masked frames of each
        sample in time order; each of the ``num`` positives gets ``num_negatives`` negatives
        drawn uniformly (with replacement, as fairseq) among the other masked frames whose
        frame index in the original sequence is within ``D`` of its own; when there is none,
        among the nearest other masked frames. Same return contract as fairseq:
        ``negs (num_negatives, B, num, dim)``, ``neg_idxs (B, num * num_negatives)`` indices
        into ``y.view(-1, dim)``.
        """
        max_distance = self.cfg.negatives_max_distance
        if max_distance <= 0 or self.n_negatives == 0:
            return super().sample_negatives(y, num, padding_count=padding_count)
        bsz, tsz, fsz = y.shape
        high = tsz - (padding_count or 0)
        assert high > 1, f"{bsz, tsz, fsz}"
        with torch.no_grad():
            positions = self._masked_positions(bsz, tsz, y.device)
            distance = (
                positions[:, :num, None] - positions[:, None, :high]
            ).abs()  # (B, num, high)
            allowed = (distance > 0) & (distance <= max_distance)
            lonely = ~allowed.any(dim=-1, keepdim=True)
            if lonely.any():  # no masked frame within D: fall back to the nearest ones
                others = distance.masked_fill(distance == 0, torch.iinfo(distance.dtype).max)
                nearest = others == others.min(dim=-1, keepdim=True).values
                allowed = torch.where(lonely, nearest, allowed)
            neg_idxs = torch.multinomial(
                allowed.view(-1, high).float(), self.n_negatives, replacement=True
            ).view(bsz, num * self.n_negatives)
            neg_idxs = neg_idxs + torch.arange(bsz, device=y.device).unsqueeze(1) * tsz
        negs = y.reshape(-1, fsz)[neg_idxs.view(-1)]
        negs = negs.view(bsz, num, self.n_negatives, fsz).permute(2, 0, 1, 3)  # to NxBxTxC
        return negs, neg_idxs

    def _masked_positions(self, bsz: int, tsz: int, device) -> torch.Tensor:
        """``(B, tsz)`` frame index in the original sequence of each of ``y``'s frames."""
        masked = self._mask_indices
        if masked is not None and int(masked.sum()) == bsz * tsz:
            return masked.nonzero()[:, 1].view(bsz, tsz).to(device)  # row-major: time order
        return torch.arange(tsz, device=device).expand(bsz, tsz)

    def get_extra_losses(self, net_output) -> List[Optional[torch.Tensor]]:
        """fairseq's ``[diversity, features_pen]``, one loss per enabled pretext family, then
        the band-power loss (``target_band_power``), the reconstruction loss
        (``target_reconstruction``), the teacher loss (``target_teacher_layers``), the
        code-classification loss (``target_code_classification``), the frame-power loss
        (``cnn_frame_power``) and the encoder's frame-power loss (``encoder_frame_power``)
        when they are on.

        Pretext losses follow :data:`~.pretext.PRETEXT_NAMES` order (band_stop,
        phase_shift, amplitude_scale); ``None`` (skipped by the criterion) when the net
        output has none (not a pre-training forward).
        """
        losses = super().get_extra_losses(net_output)
        ours = self.extra_loss_names()[self._fairseq_extra_losses():]
        losses.extend(net_output.get(f"{name}_loss") for name in ours)
        return losses

    def extra_loss_names(self) -> List[str]:
        """Names of the extra losses of a pre-training forward, in
        :meth:`get_extra_losses` order: one ``criterion.loss_weights`` entry each."""
        names = ["diversity", "features_pen"][-self._fairseq_extra_losses():]
        if self.pretext is not None:
            names.extend(f"pretext_{name}" for name in self.pretext.names)
        names.extend(name for name, _ in self._regression_heads())
        heads = [("teacher", self.teacher), ("code_classification", self.code_head),
                 ("frame_power", self.frame_power),
                 ("encoder_frame_power", self.encoder_frame_power)]
        names.extend(name for name, head in heads if head is not None)
        return names

    def _fairseq_extra_losses(self) -> int:
        """fairseq's own extra losses: the diversity term (when there is a quantizer, which
        reports ``prob_perplexity``) and the feature penalty."""
        return 2 if self.quantizer is not None else 1

    def set_num_updates(self, num_updates: int) -> None:
        """fairseq's update count, and one EMA step of the data2vec teacher per new update."""
        super().set_num_updates(num_updates)
        if self.teacher is not None and self.training:
            self.teacher.step(self.encoder, num_updates)

    def remove_pretraining_modules(self, last_layer=None) -> None:
        """fairseq's removal of the pre-training modules, plus the pretext heads, the
        regression heads, the data2vec teacher, the code-classification head and the
        frame-power heads."""
        super().remove_pretraining_modules(last_layer=last_layer)
        self.pretext = None
        self.code_head = None
        self.band_power = None
        self.reconstruction = None
        self.teacher = None
        self.frame_power = None
        self.encoder_frame_power = None
        self.encoder_frame_power_whitened = None


def pretext_enabled(cfg: Meg2VecConfig) -> bool:
    """Whether any pretext family is on in ``cfg`` (works on old configs without the fields)."""
    return bool(
        (getattr(cfg, "pretext_band_stop", "") or "").strip()
        or getattr(cfg, "pretext_phase_shift_classes", 0)
        or getattr(cfg, "pretext_amplitude_scale_classes", 0)
    )


def _config_sample_rate(cfg: Meg2VecConfig) -> float:
    try:
        return float(cfg.sample_rate)
    except (OmegaConfBaseException, TypeError, ValueError):
        raise ValueError(
            "model.sample_rate is needed by the pretext options (set it, or task.sample_rate)"
        ) from None


def validate_objectives(cfg: Meg2VecConfig) -> List[Tuple[float, float]]:
    """Check the objective options of ``cfg``; return the parsed band-stop bands.

    Raises
    ------
    ValueError
        One line naming the offending option and value.
    """

    def fail(message: str) -> None:
        raise ValueError(message)

    bands = _bands_below_nyquist(cfg, "pretext_band_stop")
    if len(bands) == 1:
        fail(f"pretext_band_stop={cfg.pretext_band_stop!r}: needs at least 2 bands (classes)")
    for name in ("pretext_phase_shift_classes", "pretext_amplitude_scale_classes"):
        value = getattr(cfg, name)
        if value < 0 or value == 1:
            fail(f"{name}={value}: must be 0 (off) or >= 2")
    if not cfg.pretext_amplitude_scale_max > 1:
        fail(f"pretext_amplitude_scale_max={cfg.pretext_amplitude_scale_max}: must be > 1")
    if not 0 < cfg.pretext_sensor_fraction < 1:
        fail(f"pretext_sensor_fraction={cfg.pretext_sensor_fraction}: must be in (0, 1)")
    if cfg.target_codebook_size < 0 or cfg.target_codebook_size == 1:
        fail(f"target_codebook_size={cfg.target_codebook_size}: must be 0 (off) or >= 2")
    if cfg.target_codebook_dim < 1:
        fail(f"target_codebook_dim={cfg.target_codebook_dim}: must be >= 1")
    if getattr(cfg, "target_codebooks", 1) < 1:
        fail(f"target_codebooks={cfg.target_codebooks}: must be >= 1")
    if getattr(cfg, "target_code_classification", False) and cfg.target_codebook_size <= 0:
        fail("target_code_classification=True needs the random-projection targets "
             "(target_codebook_size > 0)")
    if _bands_below_nyquist(cfg, "target_band_power"):
        if not cfg.target_band_power_seconds > 0:
            fail(f"target_band_power_seconds={cfg.target_band_power_seconds}: must be > 0")
    _bands_below_nyquist(cfg, "cnn_frame_power_bands")
    crop_norm = getattr(cfg, "target_crop_norm", "zscore")
    if crop_norm not in CROP_NORMS:
        fail(f"target_crop_norm={crop_norm!r}: must be one of {', '.join(CROP_NORMS)}")
    rank = getattr(cfg, "input_subspace_rank", 0)
    if not 0 <= rank <= cfg.in_channels:
        fail(f"input_subspace_rank={rank}: must be in 0..{cfg.in_channels} (in_channels; 0 = off)")
    if not getattr(cfg, "input_subspace_shrinkage", 1.0) >= 0:
        fail(f"input_subspace_shrinkage={cfg.input_subspace_shrinkage}: must be >= 0")
    whiten = getattr(cfg, "target_whiten", 0.0)
    if not whiten >= 0:
        fail(f"target_whiten={whiten}: must be >= 0 (0 = off)")
    if whiten > 0 and cfg.target_codebook_size <= 0 and not getattr(
        cfg, "target_reconstruction", False
    ):
        fail(f"target_whiten={whiten} needs the random-projection targets "
             "(target_codebook_size > 0) or target_reconstruction")
    if cfg.target_codebook_size > 0:
        for name in ("negatives_from_everywhere", "codebook_negatives", "quantize_input"):
            if getattr(cfg, name):
                fail(f"target_codebook_size={cfg.target_codebook_size} does not support {name}")
    if cfg.negatives_max_distance < 0:
        fail(f"negatives_max_distance={cfg.negatives_max_distance}: must be >= 0 (0 = off)")
    if cfg.negatives_max_distance > 0:
        for name in ("negatives_from_everywhere", "cross_sample_negatives"):
            if getattr(cfg, name):
                fail(f"negatives_max_distance={cfg.negatives_max_distance} does not support {name}")
    if getattr(cfg, "sensor_power_path_after_norm", False) and not cfg.sensor_power_path:
        fail("sensor_power_path_after_norm=True needs sensor_power_path=True")
    if getattr(cfg, "cnn_frame_power_before_path", False) and not (
        cfg.sensor_power_path and cfg.cnn_frame_power
    ):
        fail("cnn_frame_power_before_path=True needs sensor_power_path=True and "
             "cnn_frame_power=True")
    if getattr(cfg, "encoder_frame_power", False) and not cfg.cnn_frame_power:
        fail("encoder_frame_power=True needs cnn_frame_power=True (its targets)")
    if getattr(cfg, "frame_power_with_mean", False) and not cfg.cnn_frame_power:
        fail("frame_power_with_mean=True needs cnn_frame_power=True (its targets)")
    mean_whiten = getattr(cfg, "frame_mean_whiten", 0.0)
    if not mean_whiten >= 0:
        fail(f"frame_mean_whiten={mean_whiten}: must be >= 0 (0 = off)")
    if mean_whiten > 0 and not getattr(cfg, "frame_power_with_mean", False):
        fail(f"frame_mean_whiten={mean_whiten} needs frame_power_with_mean=True (the means "
             "it whitens)")
    power_whiten = getattr(cfg, "frame_power_whiten", 0.0)
    if not power_whiten >= 0:
        fail(f"frame_power_whiten={power_whiten}: must be >= 0 (0 = off)")
    if power_whiten > 0 and not cfg.cnn_frame_power:
        fail(f"frame_power_whiten={power_whiten} needs cnn_frame_power=True (its targets)")
    if not getattr(cfg, "encoder_frame_power_whiten", True) and not (
        power_whiten > 0 and getattr(cfg, "encoder_frame_power", False)
    ):
        fail("encoder_frame_power_whiten=False needs frame_power_whiten > 0 and "
             "encoder_frame_power=True (the head and targets it narrows)")
    whiten_layer = getattr(cfg, "encoder_frame_power_whiten_layer", 0)
    if whiten_layer != 0:
        if not (isinstance(whiten_layer, int) and 0 < whiten_layer < cfg.encoder_layers):
            fail(f"encoder_frame_power_whiten_layer={whiten_layer}: must be a Transformer "
                 f"layer 1..{cfg.encoder_layers - 1} (0 = the last layer, the default)")
        if not (power_whiten > 0 and getattr(cfg, "encoder_frame_power", False)
                and getattr(cfg, "encoder_frame_power_whiten", True)):
            fail(f"encoder_frame_power_whiten_layer={whiten_layer} needs frame_power_whiten "
                 "> 0, encoder_frame_power=True and encoder_frame_power_whiten=True (the "
                 "targets it moves)")
    whiten_weight = getattr(cfg, "frame_power_whiten_weight", 1.0)
    if not whiten_weight > 0:
        fail(f"frame_power_whiten_weight={whiten_weight}: must be > 0")
    if whiten_weight != 1.0 and not power_whiten > 0:
        fail(f"frame_power_whiten_weight={whiten_weight} needs frame_power_whiten > 0 (the "
             "powers it weighs)")
    path_whiten = getattr(cfg, "sensor_power_path_whiten", 0.0)
    if not path_whiten >= 0:
        fail(f"sensor_power_path_whiten={path_whiten}: must be >= 0 (0 = off)")
    if path_whiten > 0 and not cfg.sensor_power_path:
        fail(f"sensor_power_path_whiten={path_whiten} needs sensor_power_path=True")
    if path_whiten > 0 and cfg.input_subspace_rank > 0:
        fail(f"sensor_power_path_whiten={path_whiten} with input_subspace_rank="
             f"{cfg.input_subspace_rank}: the subspace filter whitens the path's input already; "
             "use one of them")
    if _bands_below_nyquist(cfg, "sensor_power_path_bands") and not cfg.sensor_power_path:
        fail(f"sensor_power_path_bands={cfg.sensor_power_path_bands!r} needs "
             "sensor_power_path=True")
    if not 0 <= cfg.mask_sensors_prob < 1:
        fail(f"mask_sensors_prob={cfg.mask_sensors_prob}: must be in [0, 1)")
    teacher_layers = getattr(cfg, "target_teacher_layers", 0)
    if not 0 <= teacher_layers <= cfg.encoder_layers:
        fail(f"target_teacher_layers={teacher_layers}: must be in 0..{cfg.encoder_layers} "
             "(encoder_layers; 0 = off)")
    if teacher_layers > 0:
        start, end = cfg.target_teacher_decay, cfg.target_teacher_end_decay
        if not 0 < start <= 1:
            fail(f"target_teacher_decay={start}: must be in (0, 1]")
        if not start <= end <= 1:
            fail(f"target_teacher_end_decay={end}: must be in [target_teacher_decay={start}, 1]")
        if cfg.target_teacher_anneal_updates < 0:
            fail(f"target_teacher_anneal_updates={cfg.target_teacher_anneal_updates}: must be >= 0")
    return bands


def _bands_below_nyquist(cfg: Meg2VecConfig, option: str) -> List[Tuple[float, float]]:
    """The ``(low_hz, high_hz)`` bands of a band option of ``cfg`` (``[]`` when unset or an
    old config without it); a one-line ``ValueError`` naming the option for a band outside
    ``0 <= low < high < Nyquist``."""
    bands = parse_bands(getattr(cfg, option, "") or "", option)
    if bands:
        rate = _config_sample_rate(cfg)
        for low, high in bands:
            if not 0 <= low < high < rate / 2:
                raise ValueError(
                    f"{option} band ({low:g}, {high:g}): needs 0 <= low < high < "
                    f"Nyquist ({rate / 2:g} Hz at sample_rate={rate:g})"
                )
    return bands


def mask_sensors(source: torch.Tensor, prob: float) -> torch.Tensor:
    """Zero ``round(prob * C)`` random sensors of each sample of ``(B, C, T)`` ``source``."""
    batch, channels, _ = source.shape
    count = int(round(prob * channels))
    ranks = torch.rand(batch, channels, device=source.device).argsort(dim=-1)
    return source * (ranks >= count).unsqueeze(-1).to(source.dtype)
