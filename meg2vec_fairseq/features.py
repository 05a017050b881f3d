"""Load a trained ``meg2vec`` checkpoint and turn MEG into contextual features.

>>> from meg2vec_fairseq.features import load_meg2vec, extract_features
>>> model, task_cfg = load_meg2vec("checkpoints/meg2vec_tiny/checkpoint_best.pt")
>>> feats = extract_features(model, meg)        # meg: (B, 306, T) -> feats: (B, T', D)

Importing this module imports neither torch nor fairseq (the layer helpers serve command
lines and the probing library); loading and extracting do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple, Union

import numpy as np

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from .models.meg2vec import Meg2VecModel

#: ``layer`` value selecting the convolutional encoder's output instead of a Transformer layer.
CNN_LAYER = "cnn"

#: Text joining the depths of a combined read-out (``"cnn+last"``).
LAYER_JOIN = "+"

#: One depth: a Transformer layer (0-based), :data:`CNN_LAYER` or None (the last layer).
Depth = Optional[Union[int, str]]

#: A layer choice: one depth, or a tuple of distinct depths whose frames are concatenated
#: along the feature axis in that order (the best depth differs by task: in round 42e-43a
#: events were best at the conv output and a sustained state at the last layer).
Layer = Union[Depth, Tuple[Depth, ...]]


def zscore_channels(x: torch.Tensor) -> torch.Tensor:
    """Z-score each channel of ``(..., channels, time)`` MEG over time.

    The input normalisation of the task's ``normalize`` option, applied identically to
    training crops and to the windows given to a trained model (probing, fine-tuning). Zero
    (padded or flat) channels stay zero instead of becoming NaN.
    """
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)
    return (x - mean) / std.clamp_min(1e-8)


def load_meg2vec(checkpoint_path: str, device: Union[str, torch.device] = "cpu"):
    """Load a ``meg2vec`` checkpoint written by fairseq for inference.

    Parameters
    ----------
    checkpoint_path : str
        A ``checkpoint_*.pt`` file written by ``fairseq-hydra-train``.
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    model : Meg2VecModel
        The model in eval mode.
    task_cfg : omegaconf.DictConfig
        The task configuration it was trained with (``sample_rate``, ``in_channels``,
        ``normalize``), so callers prepare inputs the same way.

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable or not a ``meg2vec`` checkpoint.
    """
    from fairseq import checkpoint_utils

    from . import register_with_fairseq
    from .cli import input_file_problem
    from .models.meg2vec import Meg2VecModel

    register_with_fairseq()

    problem = input_file_problem(checkpoint_path)  # before torch.load: a FIFO would block
    if problem:
        raise CheckpointError(f"{checkpoint_path}: checkpoint {problem}")
    try:
        models, cfg, _task = checkpoint_utils.load_model_ensemble_and_task([checkpoint_path])
    except FileNotFoundError as err:
        raise CheckpointError(f"{checkpoint_path}: checkpoint does not exist") from err
    except Exception as err:  # fairseq raises many types for foreign or broken files
        raise CheckpointError(
            f"{checkpoint_path}: not a loadable fairseq checkpoint ({err})"
        ) from err
    model = models[0]
    if not isinstance(model, Meg2VecModel):
        raise CheckpointError(
            f"{checkpoint_path}: holds a {type(model).__name__}, not a meg2vec model"
        )
    return model.to(device).eval(), cfg.task


def n_layers(model: Meg2VecModel) -> int:
    """Number of Transformer layers of ``model``.

    Parameters
    ----------
    model : Meg2VecModel
        Any ``meg2vec`` model.

    Returns
    -------
    int
        Its encoder's layer count.
    """
    return len(model.encoder.layers)


def depths(layer: Layer) -> Tuple[Depth, ...]:
    """The depths a layer choice reads, in order: ``layer`` itself if it is a tuple, else
    ``(layer,)``."""
    return tuple(layer) if isinstance(layer, tuple) else (layer,)


def format_layer(layer: Layer) -> Union[int, str]:
    """A layer choice as :func:`parse_layer` reads it back (an int stays an int).

    Parameters
    ----------
    layer : int, "cnn", None or tuple of these
        A layer choice.

    Returns
    -------
    int or str
        ``"last"`` for None, ``"cnn+last"`` for ``("cnn", None)``, the integer itself for one
        Transformer layer.
    """
    if isinstance(layer, tuple):
        return LAYER_JOIN.join(str(format_layer(depth)) for depth in layer)
    return "last" if layer is None else layer


def check_layer(layer: Layer, model: Meg2VecModel) -> None:
    """Check a layer choice against ``model``.

    Parameters
    ----------
    layer : int, "cnn", None or tuple of these
        Transformer layer (0-based), ``"cnn"``, None (the last layer), or a tuple of at least
        two distinct such depths (read side by side).
    model : Meg2VecModel
        The model the layer is read from.

    Raises
    ------
    ValueError
        If a depth is not an integer in ``0..n_layers(model) - 1``, ``"cnn"`` or None (the
        message gives the valid range), or a tuple has fewer than two or repeated depths.
    """
    if isinstance(layer, tuple):
        # the last layer named by its index is the same depth as None
        canonical = [n_layers(model) - 1 if depth is None else depth for depth in layer]
        if len(layer) < 2 or len(set(canonical)) != len(canonical):
            raise ValueError(
                f"layer {format_layer(layer)!r}: a combined read-out needs at least two "
                "distinct depths"
            )
    for depth in depths(layer):
        if depth is None or depth == CNN_LAYER:
            continue
        if isinstance(depth, bool) or not isinstance(depth, int) or not (
            0 <= depth < n_layers(model)
        ):
            raise ValueError(
                f"layer {depth!r} out of range: the model has {n_layers(model)} Transformer "
                f"layers (0..{n_layers(model) - 1}), or use {CNN_LAYER!r}"
            )


def layer_dim(model: Meg2VecModel, layer: Layer) -> int:
    """Width of the features a layer choice reads (summed over its depths).

    Parameters
    ----------
    model : Meg2VecModel
        Any ``meg2vec`` model.
    layer : int, "cnn", None or tuple of these
        A layer choice (:func:`check_layer`).

    Returns
    -------
    int
        The conv encoder's output width for ``"cnn"``, ``encoder_embed_dim`` for a
        Transformer layer, their sum over a tuple's depths.
    """
    from .conv_geometry import conv_output_dim

    return sum(
        conv_output_dim(model.cfg.conv_feature_layers) if depth == CNN_LAYER
        else model.cfg.encoder_embed_dim
        for depth in depths(layer)
    )


def layer_frames(
    model: Meg2VecModel,
    source: torch.Tensor,
    layer: Layer = None,
    padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Frames of a layer choice (with gradients, for fine-tuning; no input checks).

    One unmasked pass of the model per distinct Transformer layer read (the conv output comes
    with any pass); the frames of several depths are concatenated in the order given.

    Parameters
    ----------
    model : Meg2VecModel
        The model.
    source : Tensor, shape (B, C, T)
        Prepared input on the model's device.
    layer : int, "cnn", None or tuple of these
        A checked layer choice (:func:`check_layer`).
    padding_mask : Tensor of bool, shape (B, T), optional
        True where the input is padding.

    Returns
    -------
    Tensor, shape (B, T', D)
        ``D`` = :func:`layer_dim`.
    """
    import torch

    # the Transformer depths read (the conv output alone: a full pass, as fairseq reads it)
    transformer_layers = [depth for depth in depths(layer) if depth != CNN_LAYER] or [None]
    passes = {  # Transformer layer -> the model's output dict; any pass carries the conv output
        depth: model.extract_features(source, padding_mask, mask=False, layer=depth)
        for depth in dict.fromkeys(transformer_layers)
    }
    any_pass = next(iter(passes.values()))
    frames = [
        any_pass["features"] if depth == CNN_LAYER else passes[depth]["x"]
        for depth in depths(layer)
    ]
    return frames[0] if len(frames) == 1 else torch.cat(frames, dim=-1)


def extract_features(
    model: Meg2VecModel,
    meg: Union[np.ndarray, torch.Tensor],
    layer: Layer = None,
    padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Contextual (or convolutional) features of MEG input, without gradients.

    Parameters
    ----------
    model : Meg2VecModel
        A model from :func:`load_meg2vec` (or any ``Meg2VecModel``).
    meg : ndarray or Tensor, shape (B, C, T) or (C, T)
        Input in the same units and preprocessing as the training segments.
    layer : int, "cnn", None or tuple of these
        Transformer layer to read (0-based; None = last), or ``"cnn"`` for the
        convolutional encoder's output (after its layer norm), or a tuple of such depths
        whose frames are concatenated along the feature axis (e.g. ``("cnn", None)``).
    padding_mask : Tensor of bool, shape (B, T), optional
        True where the input is padding.

    Returns
    -------
    Tensor, shape (B, T', D)
        Features on the model's device (``T'`` frames at the model's frame rate, ``D`` =
        :func:`layer_dim`).

    Raises
    ------
    ValueError
        If ``layer`` is out of range (:func:`check_layer`) or the input has the wrong shape.
    """
    import torch

    check_layer(layer, model)
    with torch.no_grad():
        source = torch.as_tensor(
            np.asarray(meg, dtype=np.float32) if isinstance(meg, np.ndarray) else meg
        )
        if source.dim() == 2:
            source = source.unsqueeze(0)
        device = next(model.parameters()).device
        source = source.to(device=device, dtype=torch.float32)
        if padding_mask is not None:
            padding_mask = padding_mask.to(device)
        return layer_frames(model, source, layer, padding_mask)


def parse_layer(text: Optional[str]) -> Layer:
    """Parse a layer given as text: an integer, ``"cnn"``, ``"last"``, or such depths joined
    by ``+`` (``"cnn+last"``: both read side by side).

    Parameters
    ----------
    text : str or None
        ``"3"``, ``"cnn"``, ``"last"``, ``"cnn+last"`` or None.

    Returns
    -------
    int, "cnn", None or tuple of these
        None for ``"last"`` (and None); a tuple for a ``+``-joined text.

    Raises
    ------
    ValueError
        For any other text, or a depth named twice; the message names the value.
    """
    if text is None or text == "last":
        return None
    if LAYER_JOIN in text:
        parts = text.split(LAYER_JOIN)
        if "" in parts:
            raise ValueError(f"layer must be depths joined by '+' (e.g. 'cnn+last'), got {text!r}")
        combined = tuple(parse_layer(part) for part in parts)
        if len(set(combined)) != len(combined):
            raise ValueError(f"layer {text!r} names a depth twice")
        return combined
    if text == CNN_LAYER:
        return CNN_LAYER
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"layer must be an integer, 'last', 'cnn' or depths joined by '+', got {text!r}"
        ) from None
