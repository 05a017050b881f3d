"""Fine-tuning of a ``meg2vec`` encoder plus a linear head on labelled windows."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..conv_geometry import conv_frame_geometry, frame_count
from ..errors import ProbeError
from ..features import Layer, check_layer, layer_dim, layer_frames, zscore_channels
from .classifier import fit_linear_probe, stratified_subset
from .metrics import balanced_accuracy, confusion_matrix, macro_f1
from .pooling import POOLINGS, pool_frames
from .windows import SPLITS, LabelledDataset


@dataclass
class FinetuneOptions:
    """Hyper-parameters of :func:`finetune` (defaults: short, for many runs on shared hardware).

    Attributes
    ----------
    epochs, batch_size : int
        Passes over the training subset, and windows per update.
    lr_encoder, lr_head : float
        AdamW learning rates of the model and of the linear head.
    weight_decay : float
        AdamW weight decay.
    layer : int, "cnn", None or tuple of these
        Layer whose frames are pooled (None: the last Transformer layer; a tuple: those
        depths side by side, :func:`~meg2vec_fairseq.features.parse_layer`).
    cnn_grad_mult : float
        Gradient scale into the conv feature encoder.
    probe_init : bool
        Initialise the head with the linear probe of the initial encoder (LP-FT).
    pooling : str
        ``"mean"`` or ``"meanstd"`` of the span's frames.
    """

    epochs: int = 15
    batch_size: int = 32
    lr_encoder: float = 3e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    #: ``None`` = last Transformer layer, an int = that layer (0-based), ``"cnn"`` = conv output,
    #: a tuple of these = their frames side by side (``("cnn", None)``)
    layer: Layer = None
    #: Gradient scale into the conv feature encoder. 1.0 (default) trains it fully, so a
    #: random-init model can learn its front end too (pre-training used 0.1; 0 freezes it).
    cnn_grad_mult: float = 1.0
    #: Start the head from the linear probe of the initial encoder (LP-FT, Kumar et al., ICLR
    #: 2022: a random head's first gradients distort pre-trained features; with few labels
    #: the probe is also a strong starting point). The probe (the benchmark's logistic
    #: regression, ``C`` chosen on valid) is fitted on the same training subset and pooled
    #: frames; it counts as epoch 0, so fine-tuning keeps it unless an epoch beats it on valid.
    #: On by default with ``pooling="meanstd"``: with 10 % of the labels only the two together
    #: put a pre-trained encoder above random-init (docs/pretraining_research.md, LP-FT).
    probe_init: bool = True
    #: How the head reads the span's frames: ``"meanstd"`` (default: mean and standard
    #: deviation of each feature, as the linear probe's default pooling; a change of power over
    #: the span shows in the standard deviation, not in the mean) or ``"mean"``.
    pooling: str = "meanstd"

    def check(self) -> None:
        """Check every option.

        Raises
        ------
        ValueError
            For an invalid value (one line, naming the option).
        """
        if not isinstance(self.epochs, int) or self.epochs <= 0:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        for name in ("lr_encoder", "lr_head"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.cnn_grad_mult >= 0:
            raise ValueError(f"cnn_grad_mult must be >= 0, got {self.cnn_grad_mult!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got "
                             f"{self.pooling!r}")


def check_fraction(label_fraction: float) -> None:
    """Check a fraction of labelled training windows.

    Parameters
    ----------
    label_fraction : float
        Must be in (0, 1].

    Raises
    ------
    ValueError
        Otherwise, naming the value.
    """
    if not (isinstance(label_fraction, (int, float)) and 0 < label_fraction <= 1):
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction!r}")


@dataclass
class WindowArrays:
    """All windows of one split, read once.

    Attributes
    ----------
    groups : list of tuple
        Per window length: ``x`` ``(N, C, L)`` float32, labels ``(N,)``, pooling spans and the
        windows' positions in dataset order.
    n : int
        Windows in the split.
    """

    groups: List[Tuple[np.ndarray, np.ndarray, List[Tuple[int, int]], np.ndarray]]
    n: int


def read_windows(dataset: LabelledDataset) -> Dict[str, WindowArrays]:
    """Read every window of every split once (cache this across fine-tuning runs).

    Parameters
    ----------
    dataset : LabelledDataset
        The labelled windows.

    Returns
    -------
    dict
        Split -> :class:`WindowArrays`.

    Notes
    -----
    Windows of one length are stacked (the context is clipped at segment ends, so lengths can
    differ); batches never mix lengths, as in
    :func:`~meg2vec_fairseq.probing.pooling.feature_matrix`.
    """
    out = {}
    for split in SPLITS:
        windows = dataset.split_windows(split)
        by_length: Dict[int, List[int]] = {}
        for i, window in enumerate(windows):
            by_length.setdefault(window.length, []).append(i)
        groups = []
        for indices in by_length.values():
            x = np.stack([dataset.read(windows[i]) for i in indices]).astype(np.float32)
            y = np.array([windows[i].label for i in indices], dtype=np.int64)
            pools = [windows[i].pool for i in indices]
            groups.append((x, y, pools, np.array(indices)))
        out[split] = WindowArrays(groups, len(windows))
    return out


class _Classifier(nn.Module):
    """Encoder + linear head on the span's mean (or mean and std) of one layer's frames."""

    def __init__(self, model, n_classes: int, layer, normalize: bool,
                 pooling: str = "mean") -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.normalize = normalize
        self.pooling = pooling
        dim = layer_dim(model, layer)
        self.head = nn.Linear(2 * dim if pooling == "meanstd" else dim, n_classes)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:  # as the task and ModelSource.frames
            x = zscore_channels(x)
        return layer_frames(self.model, x, self.layer)

    def pooled(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` span means, or ``(B, 2 D)`` means then stds with ``"meanstd"``;
        ``weights``: ``(B, T')`` pooling weights (rows sum to 1)."""
        frames = self.frames(x)
        weights = weights[:, : frames.shape[1]]
        mean = torch.einsum("bt,btd->bd", weights, frames)
        if self.pooling == "mean":
            return mean
        # weighted variance over the same frames (the probe's population std); the small
        # floor keeps the square root's gradient finite
        variance = torch.einsum("bt,btd->bd", weights, (frames - mean[:, None]).pow(2))
        return torch.cat([mean, (variance + 1e-8).sqrt()], dim=-1)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)``."""
        return self.head(self.pooled(x, weights))


def _pool_weights(
    pools: Sequence[Tuple[int, int]], n_frames: int, receptive_field: int, stride: int
) -> np.ndarray:
    """Mean-pooling weights per window: exactly the frames :func:`pool_frames` selects (centre
    in the span, else the nearest), obtained by pooling an identity matrix with it."""
    centres = np.arange(n_frames) * stride + (receptive_field - 1) / 2.0
    eye = np.eye(n_frames)
    return np.stack([pool_frames(eye, centres, pool, "mean") for pool in pools])


def _copy_model(model):
    """A deep copy of ``model``. ``copy.deepcopy`` refuses weight_norm's derived weight (the
    positional conv's, a non-leaf tensor after a forward pass); it is recomputed before every
    forward anyway, so it is replaced by a detached copy of its value first."""
    from torch.nn.utils.weight_norm import WeightNorm

    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, WeightNorm):
                    setattr(module, hook.name, hook.compute_weight(module).detach())
    return copy.deepcopy(model)


def _pooled_features(
    classifier: _Classifier, arrays: WindowArrays, weights: List[torch.Tensor],
    inputs: List[torch.Tensor], batch_size: int, indices: Optional[np.ndarray] = None,
) -> np.ndarray:
    """``(N, D)`` pooled features of a split's windows in dataset order, or with ``indices``
    (positions in dataset order) of those windows alone, in that order (eval mode)."""
    wanted = np.arange(arrays.n) if indices is None else np.asarray(indices)
    slot = np.full(arrays.n, -1)
    slot[wanted] = np.arange(len(wanted))
    classifier.eval()
    features = None
    with torch.no_grad():
        for (_x, _y, _pools, order), x, w in zip(arrays.groups, inputs, weights):
            rows = np.flatnonzero(slot[order] >= 0)
            for lo in range(0, len(rows), batch_size):
                take = rows[lo : lo + batch_size]
                index = torch.as_tensor(take, device=x.device)
                pooled = classifier.pooled(x[index], w[index])
                if features is None:
                    features = np.zeros((len(wanted), pooled.shape[-1]), dtype=np.float32)
                features[slot[order[take]]] = pooled.float().cpu().numpy()
    return features


def _head_predictions(head: nn.Linear, features: np.ndarray) -> np.ndarray:
    """Class of each row of pooled ``features`` under the linear ``head``."""
    with torch.no_grad():
        logits = head(torch.from_numpy(features).to(head.weight.device, head.weight.dtype))
    return logits.argmax(-1).cpu().numpy()


def _predict(
    classifier: _Classifier, arrays: WindowArrays, weights: List[torch.Tensor],
    inputs: List[torch.Tensor], batch_size: int,
) -> np.ndarray:
    features = _pooled_features(classifier, arrays, weights, inputs, batch_size)
    return _head_predictions(classifier.head, features)


def _head_from_probe(
    classifier: _Classifier, train_features: np.ndarray, train_labels: np.ndarray,
    valid_features: np.ndarray, valid_labels: np.ndarray, n_classes: int, seed: int,
) -> None:
    """Set the head to the linear probe fitted on these pooled features (LP-FT)."""
    probe = fit_linear_probe(train_features, train_labels, valid_features, valid_labels,
                             n_classes, seed)
    weight, bias = probe.linear_weights()  # one row per class seen in training
    full_weight = np.zeros((n_classes, weight.shape[1]), dtype=np.float32)
    # a class absent from the training subset stays unreachable, as it is for the probe
    full_bias = np.full(n_classes, bias.min() - 30.0, dtype=np.float32)
    rows = probe.classifier.classes_
    full_weight[rows], full_bias[rows] = weight, bias
    with torch.no_grad():
        classifier.head.weight.copy_(torch.from_numpy(full_weight))
        classifier.head.bias.copy_(torch.from_numpy(full_bias))


def finetune(
    dataset: LabelledDataset,
    model,
    normalize: bool = False,
    label_fraction: float = 1.0,
    seed: int = 0,
    options: Optional[FinetuneOptions] = None,
    device: Union[str, torch.device] = "cpu",
    windows: Optional[Dict[str, WindowArrays]] = None,
) -> Dict[str, object]:
    """Fine-tune ``model`` + a linear head on ``dataset``; score the test split once.

    Parameters
    ----------
    dataset : LabelledDataset
        Labelled windows with train / valid / test splits (e.g. from
        :func:`~meg2vec_fairseq.probing.windows.load_manifest_labels`).
    model : Meg2VecModel
        Initial weights: ``sources.checkpoint_source(path).model`` or the model of
        ``sources.build_random_model(config, seed)``; copied, never modified.
    normalize : bool
        z-score each window per channel first (the model's pre-training task did).
    label_fraction : float
        Stratified fraction of the training windows used, in (0, 1] (seeded by ``seed``).
    seed : int
        Seed of the subset, the head's initialisation, dropout and batch order.
    options : FinetuneOptions or None
        Epochs, learning rates, layer, ...
    device : str or torch.device
        ``"cpu"`` or ``"cuda"``; deterministic for a given seed on CPU.
    windows : dict or None
        :func:`read_windows` of ``dataset``, to read the data once for many runs.

    Returns
    -------
    dict
        ``seed``, ``label_fraction``, ``n_train``, ``best_epoch`` (1-based; 0 = the
        linear probe of ``probe_init``), ``valid_macro_f1`` (of that epoch), ``valid_curve``
        (from epoch 0 with ``probe_init``), test ``macro_f1``,
        ``balanced_accuracy``, ``confusion``, ``options``.

    Raises
    ------
    ValueError
        For an option out of range (one line, naming it); ``ProbeError`` for a dataset
        without a split or with a single training class, or windows shorter than a frame.

    Notes
    -----
    The counterpart of the linear probe that updates the encoder: the same labelled windows
    (with their context and pooling span), the same frame-selection rule
    (:func:`~meg2vec_fairseq.probing.pooling.pool_frames`), the same stratified training
    subsets (:func:`~meg2vec_fairseq.probing.classifier.stratified_subset`) and metrics, so a
    fine-tuning score and a probe score on one dataset compare directly.

    Per run: a stratified ``label_fraction`` of the training windows (seeded); the model (a
    checkpoint's or fresh weights, deep-copied so the caller's model is untouched) and a linear
    head on the mean and std (``pooling="mean"``: the mean) of the chosen layer's frames inside
    the span; AdamW (encoder ``lr_encoder`` 3e-4, head ``lr_head`` 1e-3: a fresh head needs the
    larger step), class-weighted cross-entropy, ``epochs`` passes; after each epoch the
    validation macro-F1 is measured and the best epoch's weights are kept; the test split is
    scored once, with those weights. With ``options.probe_init`` (the default) the head starts
    as the linear probe (:func:`~meg2vec_fairseq.probing.classifier.fit_linear_probe`) of the
    initial encoder's pooled frames on the same training subset, scored as epoch 0 (LP-FT).
    """
    options = options or FinetuneOptions()
    check_fraction(label_fraction)
    options.check()
    dataset.check()
    layer = options.layer
    check_layer(layer, model)
    device = torch.device(device)
    n_classes = len(dataset.class_names)
    windows = windows if windows is not None else read_windows(dataset)
    receptive_field, stride = conv_frame_geometry(model.cfg.conv_feature_layers)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    classifier = _Classifier(_copy_model(model), n_classes, layer, normalize,
                             options.pooling).to(device)
    classifier.model.feature_grad_mult = options.cnn_grad_mult

    def tensors(split: str) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        inputs, weights = [], []
        for x, _y, pools, _order in windows[split].groups:
            if x.shape[-1] < receptive_field:
                raise ProbeError(
                    f"{dataset.name}: a {split} window has {x.shape[-1]} samples, fewer than "
                    f"the {receptive_field} of one frame"
                )
            n_frames = frame_count(x.shape[-1], receptive_field, stride)
            w = _pool_weights(pools, n_frames, receptive_field, stride)
            inputs.append(torch.from_numpy(x).to(device))
            weights.append(torch.from_numpy(w.astype(np.float32)).to(device))
        return inputs, weights

    data = {split: tensors(split) for split in SPLITS}
    labels = {split: dataset.labels(split) for split in SPLITS}
    subset = stratified_subset(labels["train"], label_fraction, seed)
    # (group, row) of each chosen training window, for batching within a length group
    position = {}
    for g, (_x, _y, _pools, order) in enumerate(windows["train"].groups):
        for row, index in enumerate(order):
            position[int(index)] = (g, row)
    chosen = [position[int(i)] for i in subset]
    counts = np.bincount(labels["train"][subset], minlength=n_classes).astype(np.float64)
    class_weight = np.where(counts > 0, len(subset) / (n_classes * np.maximum(counts, 1)), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(class_weight, dtype=torch.float32,
                                                      device=device))
    optimizer = torch.optim.AdamW(
        [{"params": classifier.model.parameters(), "lr": options.lr_encoder},
         {"params": classifier.head.parameters(), "lr": options.lr_head}],
        weight_decay=options.weight_decay,
    )
    train_labels = [torch.from_numpy(y).to(device) for _x, y, _p, _o in windows["train"].groups]

    best = (-1.0, 0, None)
    curve = []
    if options.probe_init:  # epoch 0: the linear probe of the initial encoder
        batch = options.batch_size
        # only the chosen training windows are pooled, and the valid features are pooled
        # once: the probe is fitted on them and the fitted head scores them
        train_features = _pooled_features(classifier, windows["train"], data["train"][1],
                                          data["train"][0], batch, indices=subset)
        valid_features = _pooled_features(classifier, windows["valid"], data["valid"][1],
                                          data["valid"][0], batch)
        _head_from_probe(classifier, train_features, labels["train"][subset], valid_features,
                         labels["valid"], n_classes, seed)
        predictions = _head_predictions(classifier.head, valid_features)
        score = macro_f1(confusion_matrix(labels["valid"], predictions, n_classes))
        curve.append(score)
        best = (score, 0, {k: v.detach().clone() for k, v in classifier.state_dict().items()})
    for epoch in range(1, options.epochs + 1):
        classifier.train()
        order = rng.permutation(len(chosen))
        by_group: Dict[int, List[int]] = {}
        for i in order:
            g, row = chosen[i]
            by_group.setdefault(g, []).append(row)
        batches = [(g, rows[lo : lo + options.batch_size]) for g, rows in by_group.items()
                   for lo in range(0, len(rows), options.batch_size)]
        for b in rng.permutation(len(batches)):
            g, rows = batches[b]
            index = torch.as_tensor(rows, device=device)
            logits = classifier(data["train"][0][g][index], data["train"][1][g][index])
            loss = loss_fn(logits, train_labels[g][index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        predictions = _predict(classifier, windows["valid"], data["valid"][1],
                               data["valid"][0], options.batch_size)
        score = macro_f1(confusion_matrix(labels["valid"], predictions, n_classes))
        curve.append(score)
        if score > best[0]:  # keep the first best epoch's weights
            state = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
            best = (score, epoch, state)
    valid_score, best_epoch, state = best
    classifier.load_state_dict(state)
    predictions = _predict(classifier, windows["test"], data["test"][1], data["test"][0],
                           options.batch_size)
    matrix = confusion_matrix(labels["test"], predictions, n_classes)
    return {
        "seed": seed,
        "label_fraction": float(label_fraction),
        "n_train": int(len(subset)),
        "best_epoch": int(best_epoch),
        "valid_macro_f1": float(valid_score),
        "valid_curve": [float(v) for v in curve],
        "macro_f1": macro_f1(matrix),
        "balanced_accuracy": balanced_accuracy(matrix),
        "confusion": matrix.tolist(),
        "options": {**asdict(options), "device": str(device)},
    }


__all__ = ["FinetuneOptions", "WindowArrays", "check_fraction", "read_windows", "finetune"]
