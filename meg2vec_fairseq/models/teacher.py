"""data2vec targets for ``meg2vec``: regress an EMA teacher's averaged top layers.

After data2vec (Baevski et al. 2022; fairseq ``examples/data2vec``, ``ema_transformer_only``):
a teacher copy of the Transformer, updated as an exponential moving average of the student's,
reads the student's CNN features before time masking (with ``mask_sensors_prob``, of the same
sensor-masked input as the student); its top ``K`` layers' feed-forward outputs, each
instance-normalised over time, are averaged into one ``(B, T', D)`` target per frame; a linear
head on the student's Transformer output of the *masked* frames regresses them. The targets are
contextual (each frame's target sees the whole crop), unlike the frozen random-projection codes
of :mod:`.targets`, which see one frame's raw input.

The moving average itself is fairseq's :class:`~fairseq.modules.EMAModule`, kept in float32
(``ema_fp32``) and built on the first update, on the device the model trains on. The teacher is a
registered submodule, so checkpoints carry it and a resumed run continues from it.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.modules.ema_module import EMAModule, EMAModuleConfig
from torch import nn

from .masked_regression import MaskedRegressionHead


class TeacherTargets(MaskedRegressionHead):
    """An EMA teacher of a Transformer encoder, its averaged top layers as regression targets.

    Parameters
    ----------
    encoder : nn.Module
        The student's fairseq ``TransformerEncoder``; the teacher starts as a copy of it.
    encoder_config : Wav2Vec2Config
        The configuration ``encoder`` was built from (the teacher is built from it).
    embed_dim : int
        Dimension of the encoder output (and of the targets).
    top_layers : int
        Number ``K`` of the teacher's last layers averaged into the target (1..layers).
    decay : float
        EMA decay at the first update, in (0, 1].
    end_decay : float
        EMA decay reached after ``anneal_updates`` updates (linear), in [decay, 1].
    anneal_updates : int
        Updates over which the decay goes from ``decay`` to ``end_decay`` (0: ``end_decay``
        from the start).
    """

    def __init__(
        self,
        encoder: nn.Module,
        encoder_config,
        embed_dim: int,
        top_layers: int,
        decay: float,
        end_decay: float,
        anneal_updates: int,
    ) -> None:
        super().__init__(embed_dim, embed_dim)
        # built anew from the encoder's config, not deep-copied: fairseq's positional conv
        # uses torch's old weight_norm, whose computed weight refuses deepcopy
        self.teacher = type(encoder)(encoder_config).requires_grad_(False)
        self.teacher.load_state_dict(encoder.state_dict())
        self.top_layers = top_layers
        self.decay, self.end_decay, self.anneal_updates = decay, end_decay, anneal_updates
        self._ema: Optional[EMAModule] = None  # built on the first step, on the training device
        self._updates_seen = -1

    def decay_at(self, num_updates: int) -> float:
        """The EMA decay after ``num_updates`` updates (data2vec's linear anneal)."""
        if num_updates >= self.anneal_updates:
            return self.end_decay
        return self.decay + (self.end_decay - self.decay) * num_updates / self.anneal_updates

    @torch.no_grad()
    def step(self, student: nn.Module, num_updates: int) -> None:
        """Move the teacher towards ``student`` once per new update count.

        fairseq's task calls ``set_num_updates`` before every forward, with the same count
        during gradient accumulation; only an increase moves the teacher.
        """
        if num_updates <= self._updates_seen:
            return
        first = self._updates_seen < 0
        self._updates_seen = num_updates
        if first:  # the teacher already equals the student (fresh) or its checkpoint (resumed)
            return
        if self._ema is None:
            config = EMAModuleConfig(ema_decay=self.decay, ema_fp32=True)
            self._ema = EMAModule(self.teacher, config, copy_model=False)
        self._ema.set_decay(self.decay_at(num_updates))
        if self._ema.get_decay() < 1:
            self._ema.step(student)

    @torch.no_grad()
    def targets(self, features: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``(B, T', D)`` targets: the mean of the teacher's top layers, each instance-normed.

        Parameters
        ----------
        features : torch.Tensor
            ``(B, T', D)`` unmasked encoder input (the student's projected CNN features).
        padding_mask : torch.Tensor or None
            ``(B, T')`` boolean, True at padded frames.
        """
        self.teacher.eval()
        layers = len(self.teacher.layers)
        _, layer_results = self.teacher.extract_features(
            features, padding_mask=padding_mask, min_layer=layers - self.top_layers
        )
        # each layer's feed-forward output (T, B, D), normalised per sample and feature over time
        normed = [F.instance_norm(ffn.float().permute(1, 2, 0)) for _x, _z, ffn in layer_results]
        return (sum(normed) / len(normed)).transpose(1, 2)
