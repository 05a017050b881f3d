"""Write features of every segment of a manifest, for ``tools/extract_features.py``."""

from __future__ import annotations

import os
from typing import Dict

import torch

from .constants import MAX_ABS_VALUE
from .conv_geometry import conv_frame_geometry
from .data.meg_dataset import MegDataError, MegNpyDataset
from .features import Layer, extract_features, load_meg2vec
from .io.atomic import atomic_save_npy
from .io.manifest import write_manifest


def write_manifest_features(
    checkpoint_path: str,
    manifest_path: str,
    dest: str,
    layer: Layer = None,
    device: str = "cpu",
) -> Dict[str, object]:
    """Extract features of every segment listed in ``manifest_path`` into ``dest``.

    Segments are read whole and prepared as the task prepared them in training (same
    channel count check, same optional per-channel normalisation).

    Parameters
    ----------
    checkpoint_path : str
        meg2vec checkpoint.
    manifest_path : str
        fairseq TSV manifest of ``.npy`` segments.
    dest : str
        Output directory; mirrors the manifest's relative paths.
    layer : int, "cnn", None or tuple of these
        Which representation to write (see :func:`~meg2vec_fairseq.features.extract_features`).
    device : str
        torch device.

    Returns
    -------
    dict
        ``segments`` written, ``frames`` of the last one, feature ``dim``, and the ``index``
        TSV path.

    Raises
    ------
    CheckpointError
        For a checkpoint that is not a usable meg2vec checkpoint.
    MegDataError
        For a bad manifest or segment (before anything is written when the header tells:
        also a segment shorter than the model's receptive field, which gives no frame).
    """
    model, task_cfg = load_meg2vec(checkpoint_path, device)
    dataset = MegNpyDataset(
        manifest_path,
        sample_rate=task_cfg.sample_rate,
        in_channels=task_cfg.in_channels,
        shuffle=False,
        normalize=task_cfg.normalize,
        max_abs_value=getattr(task_cfg, "max_abs_value", MAX_ABS_VALUE),
    )
    receptive_field, _ = conv_frame_geometry(model.cfg.conv_feature_layers)
    too_short = [i for i, size in enumerate(dataset.sizes) if size < receptive_field]
    if too_short:  # the conv stack would fail on it with a shape error naming no file
        i = too_short[0]
        raise MegDataError(
            f"{dataset._where(i)}: {int(dataset.sizes[i])} samples, shorter than the "
            f"model's receptive field of {receptive_field} samples ({len(too_short)} such "
            "segment(s)); no feature frame can be computed"
        )
    dest = os.path.abspath(dest)
    rows = []
    features = torch.empty(0, 0)
    for index in range(len(dataset)):
        source = dataset[index]["source"]
        features = extract_features(model, source, layer=layer)[0].cpu().numpy()
        path = os.path.join(dest, dataset.relative_paths[index])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_save_npy(path, features)
        rows.append((dataset.relative_paths[index], features.shape[0]))
    index_path = os.path.join(dest, "features.tsv")
    write_manifest(index_path, dest, rows)
    return {
        "segments": len(rows),
        "frames": int(features.shape[0]),
        "dim": int(features.shape[-1]),
        "index": index_path,
    }
