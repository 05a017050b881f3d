"""Load a trained ``meg2vec`` checkpoint and turn MEG into contextual features.

>>> from meg2vec_fairseq.features import load_meg2vec, extract_features
>>> model, task_cfg = load_meg2vec("checkpoints/meg2vec_tiny/checkpoint_best.pt")
>>> feats = extract_features(model, meg)        # meg: (B, 306, T) -> feats: (B, T', D)

Importing this module imports neither torch nor fairseq (the layer helpers serve command
lines and the probing library); loading and extracting do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from .models.meg2vec import Meg2VecModel

#: ``layer`` value selecting the convolutional encoder's output instead of a Transformer layer.
CNN_LAYER = "cnn"


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


def check_layer(layer: Optional[Union[int, str]], model: Meg2VecModel) -> None:
    """Check a layer choice against ``model``: None, :data:`CNN_LAYER` or a Transformer layer.

    Parameters
    ----------
    layer : int, "cnn" or None
        Transformer layer (0-based), ``"cnn"`` or None (the last layer).
    model : Meg2VecModel
        The model the layer is read from.

    Raises
    ------
    ValueError
        If ``layer`` is not an integer in ``0..n_layers(model) - 1``, ``"cnn"`` or None; the
        message gives the valid range.
    """
    if layer is None or layer == CNN_LAYER:
        return
    if not isinstance(layer, int) or not 0 <= layer < n_layers(model):
        raise ValueError(
            f"layer {layer!r} out of range: the model has {n_layers(model)} Transformer "
            f"layers (0..{n_layers(model) - 1}), or use {CNN_LAYER!r}"
        )


def extract_features(
    model: Meg2VecModel,
    meg: Union[np.ndarray, torch.Tensor],
    layer: Optional[Union[int, str]] = None,
    padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Contextual (or convolutional) features of MEG input, without gradients.

    Parameters
    ----------
    model : Meg2VecModel
        A model from :func:`load_meg2vec` (or any ``Meg2VecModel``).
    meg : ndarray or Tensor, shape (B, C, T) or (C, T)
        Input in the same units and preprocessing as the training segments.
    layer : int, "cnn" or None
        Transformer layer to read (0-based; None = last), or ``"cnn"`` for the
        convolutional encoder's output (after its layer norm).
    padding_mask : Tensor of bool, shape (B, T), optional
        True where the input is padding.

    Returns
    -------
    Tensor, shape (B, T', D)
        Features on the model's device (``T'`` frames at the model's frame rate).

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
        transformer_layer = None if layer == CNN_LAYER else layer
        output = model.extract_features(
            source, padding_mask, mask=False, layer=transformer_layer
        )
    return output["features"] if layer == CNN_LAYER else output["x"]


def parse_layer(text: Optional[str]) -> Optional[Union[int, str]]:
    """Parse a layer given as text: an integer, ``"cnn"`` or ``"last"``.

    Parameters
    ----------
    text : str or None
        ``"3"``, ``"cnn"``, ``"last"`` or None.

    Returns
    -------
    int, "cnn" or None
        None for ``"last"`` (and None).

    Raises
    ------
    ValueError
        For any other text; the message names the value.
    """
    if text is None or text == "last":
        return None
    if text == CNN_LAYER:
        return CNN_LAYER
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"layer must be an integer, 'last' or 'cnn', got {text!r}") from None
