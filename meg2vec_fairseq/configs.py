"""The shipped pre-training configs (``config/pretraining``), composed as hydra does, fairseq-free.

``meg2vec_tiny/small/base.yaml`` hold what makes each size and pull the common part
(``_meg2vec_common.yaml``) in through a hydra ``defaults:`` list, so ``OmegaConf.load`` of one
of them is only part of the config: read them with :func:`load_pretraining_config`.
"""

import os
from pathlib import Path
from typing import List, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import InputError

#: The folder of the shipped configs (the card's ``--config-dir config/pretraining``).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "pretraining"

#: The defaults-list entry that stands for the file's own content.
SELF = "_self_"

#: ``model.`` fields that turn a shipped config's objective into the seed's plain wav2vec 2.0
#: (GroupNorm feature encoder, learned Gumbel quantizer, uniform negatives, no sensor masking,
#: no frame-power loss); see :func:`plain_wav2vec2_overrides` for the loss weights.
PLAIN_WAV2VEC2_MODEL = {
    "extractor_mode": "default",
    "target_codebook_size": 0,
    "mask_sensors_prob": 0,
    "negatives_max_distance": 0,
    "cnn_frame_power": False,
    "encoder_frame_power": False,
    "sensor_power_path": False,
    "sensor_power_path_whiten": 0,
    "frame_power_whiten": 0,
    "encoder_frame_power_whiten": True,
}


def resolve_config_path(name_or_path: Union[str, "os.PathLike[str]"]) -> Path:
    """The yaml file of a config: an existing path, or the name of a shipped config.

    Parameters
    ----------
    name_or_path : str or path-like
        A path to a yaml file, or the name of a config in ``config/pretraining``
        (``"meg2vec_tiny"`` or ``"meg2vec_tiny.yaml"``).

    Returns
    -------
    pathlib.Path
        The yaml file.

    Raises
    ------
    InputError
        If ``name_or_path`` is neither an existing file nor a shipped config; the message names
        the value and the folder searched.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = os.fspath(name_or_path)
    shipped = CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    raise InputError(f"{name!r}: no such yaml file, nor a shipped config in {CONFIG_DIR}")


def load_pretraining_config(name_or_path: Union[str, "os.PathLike[str]"]) -> DictConfig:
    """A pre-training config composed as ``fairseq-hydra-train --config-name`` composes it.

    Parameters
    ----------
    name_or_path : str or path-like
        A shipped config name (``"meg2vec_tiny"``) or a yaml path (see
        :func:`resolve_config_path`).

    Returns
    -------
    omegaconf.DictConfig
        The composed job config: its ``defaults:`` list applied, without the ``hydra`` node
        (as hydra's ``compose`` returns it) and with interpolations such as
        ``${task.in_channels}`` left unresolved. A yaml without a ``defaults:`` list comes
        back as ``OmegaConf.load`` reads it, less its ``hydra`` node.

    Raises
    ------
    InputError
        If a file does not exist or is not a yaml mapping, or its ``defaults:`` list holds
        anything but names of configs in the same folder and ``_self_`` (the only kinds of
        entries the shipped configs use), or the list is circular.

    Notes
    -----
    Hydra merges a ``defaults:`` list in order, each entry's own (composed) config and the
    file's content at ``_self_`` (at the end when ``_self_`` is not listed). The shipped size
    configs list ``_self_`` first: fairseq validates the named config against its
    ``FairseqConfig`` schema, whose default values would otherwise override the common part.
    This function follows those rules without importing hydra or fairseq;
    ``tests/test_configs.py`` checks it against hydra's compose API.
    """
    composed = _compose(resolve_config_path(name_or_path), [])
    if "hydra" in composed:
        composed.pop("hydra")
    return composed


def _compose(path: Path, seen: List[Path]) -> DictConfig:
    """The config of ``path`` with its defaults list merged (recursively)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(p.name for p in seen + [path])
        raise InputError(f"{path}: circular defaults list ({chain})")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable or malformed yaml
        raise InputError(f"{path}: not a readable yaml file ({err})") from None
    if not isinstance(raw, DictConfig):
        raise InputError(f"{path}: not a yaml mapping")
    if "defaults" not in raw:
        return raw
    defaults = raw.pop("defaults")
    if not isinstance(defaults, ListConfig):
        raise InputError(f"{path}: 'defaults' is not a list")
    entries = [entry for entry in defaults]
    if SELF not in entries:
        entries.append(SELF)
    parts = []
    for entry in entries:
        if entry == SELF:
            parts.append(raw)
            continue
        if not isinstance(entry, str) or "/" in entry or " " in entry:
            raise InputError(
                f"{path}: defaults entry {entry!r} is not the name of a config in the same folder"
                " (the only kind this reader supports besides _self_)"
            )
        name = entry if entry.endswith(".yaml") else f"{entry}.yaml"
        included = path.parent / name
        if not included.is_file():
            raise InputError(f"{path}: defaults entry {entry!r}: no {included}")
        parts.append(_compose(included, seen + [path]))
    merged = OmegaConf.merge(*parts)
    assert isinstance(merged, DictConfig)
    return merged


def plain_wav2vec2_overrides(name_or_path: Union[str, "os.PathLike[str]"]) -> List[str]:
    """Command-line overrides that give a config the seed's plain wav2vec 2.0 objective.

    Parameters
    ----------
    name_or_path : str or path-like
        A shipped config name or a yaml path (see :func:`resolve_config_path`).

    Returns
    -------
    list of str
        ``model.<field>=<value>`` for each of :data:`PLAIN_WAV2VEC2_MODEL`, then
        ``criterion.loss_weights=[<diversity>,<feature penalty>]``: the config's first two
        weights, the only extra losses plain wav2vec 2.0 has (fairseq's criterion needs one
        weight per extra loss, so the shipped frame-power entry has to go).

    Raises
    ------
    InputError
        If the config cannot be read (:func:`load_pretraining_config`) or has fewer than two
        ``criterion.loss_weights``.
    """
    cfg = load_pretraining_config(name_or_path)
    weights = list(cfg.get("criterion", {}).get("loss_weights", []) or [])
    if len(weights) < 2:
        raise InputError(
            f"{resolve_config_path(name_or_path)}: criterion.loss_weights needs at least the "
            f"diversity and feature-penalty weights, got {weights}"
        )
    model = [
        f"model.{key}={str(value).lower() if isinstance(value, bool) else value}"
        for key, value in PLAIN_WAV2VEC2_MODEL.items()
    ]
    return model + [f"criterion.loss_weights=[{weights[0]},{weights[1]}]"]
