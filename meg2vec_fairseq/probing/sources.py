"""Feature sources: the raw sensors, a checkpoint, or the same architecture with fresh weights."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple

import numpy as np

from ..configs import load_pretraining_config
from ..constants import N_SENSORS
from ..errors import CheckpointError, InputError, ProbeError
from ..features import Layer, check_layer, format_layer

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from ..models.meg2vec import Meg2VecModel


class RawSource:
    """The preprocessed sensors themselves: one "frame" per sample, ``D`` = channels.

    Attributes
    ----------
    name : str
        ``"raw"``.
    min_samples : int
        Shortest window it can read (1).
    """

    kind = "raw"

    def __init__(self) -> None:
        self.name = "raw"
        self.min_samples = 1

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Frames of a batch of windows.

        Parameters
        ----------
        windows : ndarray, shape (B, C, T)
            Windows of equal length.

        Returns
        -------
        frames : ndarray, shape (B, T, C)
            One frame per sample.
        centres : ndarray, shape (T,)
            Sample position of each frame.
        """
        return np.transpose(windows, (0, 2, 1)), np.arange(windows.shape[-1], dtype=np.float64)

    def describe(self) -> Dict[str, object]:
        """What the source is, for the result JSON."""
        return {"kind": self.kind, "name": self.name}


class ModelSource:
    """Features of a ``meg2vec`` model (checkpoint or fresh weights) at one layer.

    Parameters
    ----------
    model : Meg2VecModel
        The model (put in eval mode).
    layer : int, "cnn", None or tuple of these
        Transformer layer (0-based), ``"cnn"`` (conv encoder output) or None (last layer).
    normalize : bool
        z-score each channel of each window over time before the model, as the pre-training
        task did when its ``normalize`` was set (read from the checkpoint or config).
    name, kind, origin : str
        How the source is named and described in results.
    batch_size : int
        Windows per forward pass.

    Raises
    ------
    ProbeError
        If ``layer`` is out of range for ``model``.
    """

    kind = "model"

    def __init__(
        self,
        model: Meg2VecModel,
        layer: Layer = None,
        normalize: bool = False,
        name: str = "model",
        kind: str = "checkpoint",
        origin: str = "",
        batch_size: int = 32,
    ) -> None:
        from ..conv_geometry import conv_frame_geometry

        try:
            check_layer(layer, model)
        except ValueError as err:
            raise ProbeError(str(err)) from None
        self.model = model.eval()
        self.layer = layer
        self.normalize = normalize
        self.name = name
        self.kind = kind
        self.origin = origin
        self.batch_size = batch_size
        self.receptive_field, self.stride = conv_frame_geometry(model.cfg.conv_feature_layers)
        self.min_samples = self.receptive_field

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Frames of a batch of windows.

        Parameters
        ----------
        windows : ndarray, shape (B, C, T)
            Windows of equal length.

        Returns
        -------
        frames : ndarray, shape (B, T', D)
            The layer's features.
        centres : ndarray, shape (T',)
            Sample position of the centre of each frame's receptive field.
        """
        import torch

        from ..features import extract_features, zscore_channels

        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if self.normalize:
            x = zscore_channels(x)
        outputs = []
        for i in range(0, len(x), self.batch_size):
            outputs.append(extract_features(self.model, x[i : i + self.batch_size], self.layer))
        features = torch.cat(outputs).cpu().numpy()
        centres = np.arange(features.shape[1]) * self.stride + (self.receptive_field - 1) / 2.0
        return features, centres

    def describe(self) -> Dict[str, object]:
        """What the source is, for the result JSON."""
        return {
            "kind": self.kind,
            "name": self.name,
            "origin": self.origin,
            "layer": format_layer(self.layer),
            "normalize": self.normalize,
        }


@dataclass
class SourceSpec:
    """How to build a feature source for a seed.

    Attributes
    ----------
    name : str
        Row name in results.
    build : callable
        ``build(seed) -> source`` (:class:`RawSource` or :class:`ModelSource`).
    seeded : bool
        Whether the source itself changes with the seed (fresh random weights); otherwise it
        is built once and its features are reused for every seed.
    """

    name: str
    build: Callable[[int], object]
    seeded: bool = False


def checkpoint_source(
    path: str, layer: Layer = None, batch_size: int = 32
) -> ModelSource:
    """A :class:`ModelSource` of a trained checkpoint.

    Parameters
    ----------
    path : str
        A ``meg2vec`` checkpoint written by ``fairseq-hydra-train``.
    layer : int, "cnn", None or tuple of these
        Layer read (see :class:`ModelSource`).
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    ModelSource
        With the checkpoint task's ``normalize``.

    Raises
    ------
    ProbeError
        If the checkpoint cannot be loaded as ``meg2vec`` (the message names the file) or the
        layer is out of range.
    """
    from ..features import load_meg2vec

    try:
        model, task_cfg = load_meg2vec(path)
    except CheckpointError as err:
        raise ProbeError(str(err).splitlines()[0]) from None
    return ModelSource(
        model, layer, bool(getattr(task_cfg, "normalize", False)), name="checkpoint",
        kind="checkpoint", origin=os.path.abspath(path), batch_size=batch_size,
    )


def meg2vec_config(config: str, in_channels: Optional[int] = None) -> Tuple[DictConfig, bool]:
    """The ``meg2vec`` model configuration of a pre-training config or checkpoint.

    Parameters
    ----------
    config : str
        A pre-training yaml (path or shipped name such as ``"meg2vec_tiny"``, composed by
        :func:`meg2vec_fairseq.configs.load_pretraining_config`: its ``model`` section and
        ``task.in_channels`` / ``task.normalize``), or a checkpoint (``.pt``: its saved
        configuration).
    in_channels : int or None
        Sensor count of the model's input; None: the config's ``task.in_channels``.

    Returns
    -------
    model_cfg : omegaconf.DictConfig
        A structured ``Meg2VecConfig`` (fields the model does not know are left out).
    normalize : bool
        The task's ``normalize`` (inputs z-scored per window and channel).

    Raises
    ------
    ProbeError
        If ``config`` is no readable yaml or checkpoint, or holds no ``meg2vec`` model; the
        message names the file.
    """
    from omegaconf import OmegaConf

    from ..models.meg2vec import Meg2VecConfig

    if config.endswith(".pt"):
        import torch

        if not os.path.isfile(config):
            raise ProbeError(f"{config}: checkpoint does not exist")
        try:
            state = torch.load(config, map_location="cpu", weights_only=False)
            cfg = state["cfg"]
            model_cfg, task_cfg = cfg["model"], cfg["task"]
        except Exception as err:  # noqa: BLE001 - any unreadable/foreign file
            raise ProbeError(f"{config}: not a fairseq checkpoint ({err})") from None
        if model_cfg.get("_name") != "meg2vec":
            raise ProbeError(f"{config}: holds a {model_cfg.get('_name')!r} model, not meg2vec")
    else:
        try:
            raw = load_pretraining_config(config)
        except InputError as err:
            raise ProbeError(str(err)) from None
        if "model" not in raw or raw.model.get("_name") != "meg2vec":
            raise ProbeError(f"{config}: no 'model: _name: meg2vec' section")
        task_cfg = raw.get("task", {}) or {}
        model_cfg = raw.model
    fields = OmegaConf.to_container(OmegaConf.create(model_cfg), resolve=False)
    fields.pop("_name", None)
    channels = in_channels or int(task_cfg.get("in_channels", N_SENSORS) or N_SENSORS)
    fields["in_channels"] = channels
    structured = OmegaConf.structured(Meg2VecConfig)
    known = {k: v for k, v in fields.items() if k in structured}
    merged = OmegaConf.merge(structured, OmegaConf.create(known))
    merged.in_channels = channels
    return merged, bool(task_cfg.get("normalize", False))


def build_random_model(
    config: str, seed: Optional[int], in_channels: Optional[int] = None
) -> Tuple[Meg2VecModel, bool]:
    """The architecture of a pre-training config or checkpoint with fresh weights.

    Parameters
    ----------
    config : str
        A pre-training yaml (path or shipped name) or a checkpoint (its weights are ignored);
        see :func:`meg2vec_config`.
    seed : int or None
        Seed of the weights (``torch.manual_seed``); None: torch's current random state.
    in_channels : int or None
        Sensor count; None: the config's ``task.in_channels``.

    Returns
    -------
    model : Meg2VecModel
        In eval mode, initialised exactly as ``fairseq-hydra-train`` initialises it before the
        first update.
    normalize : bool
        The config task's ``normalize``.

    Raises
    ------
    ProbeError
        As :func:`meg2vec_config`.
    """
    import torch

    from ..models.meg2vec import Meg2VecModel

    model_cfg, normalize = meg2vec_config(config, in_channels)
    if seed is not None:
        torch.manual_seed(seed)
    model = Meg2VecModel(model_cfg)
    return model.eval(), normalize


def random_init_spec(
    config: str, layer: Layer, in_channels: int, device: str = "cpu",
    name: str = "random-init",
) -> SourceSpec:
    """A seeded :class:`SourceSpec` of fresh weights of ``config`` (one draw per seed).

    Parameters
    ----------
    config : str
        See :func:`meg2vec_config`.
    layer : int, "cnn", None or tuple of these
        Layer read (see :class:`ModelSource`).
    in_channels : int
        Sensor count of the dataset probed.
    device : str
        Where the model runs.
    name : str
        Row name in results.

    Returns
    -------
    SourceSpec
        ``seeded=True``; the source built for seed ``s`` has the weights of ``seed=s``.
    """

    def build(seed: int) -> ModelSource:
        model, normalize = build_random_model(config, seed, in_channels)
        return ModelSource(model.to(device), layer, normalize, name=name, kind="random-init",
                           origin=config)

    return SourceSpec(name, build, seeded=True)
