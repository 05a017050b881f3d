#!/usr/bin/env python
"""Which linear views of the sensors keep a probe task? (diagnostic for issue 9)

The linear probe pools each feature's mean and standard deviation over a window, so it reads
the *power of each feature*. A sustained state that raises the power of one spatial component
is then only visible when some features are not dominated by the strong components (1/f
background, alpha). This script probes fixed linear views of the raw sensors of a
``benchmarks/probe_synthetic.py`` data directory with the same probe (pooling, classifier,
seeds) as the benchmark:

- ``raw``: the sensors;
- ``raw z-scored per window``: each sensor z-scored over each window (what per-crop
  normalisation leaves);
- ``random rotation``: an orthogonal mix of all sensors (nothing lost, only mixed);
- ``random projection <d>``: a Gaussian map to ``--dim`` features (like a first conv layer
  without its temporal kernel);
- ``PCA <k>``: the top ``k`` principal components of the *unlabelled* pre-training recordings
  (what a variance-keeping unsupervised spatial filter could learn);
- ``conv1 of <config>``: the first (linear) convolution of the config's conv encoder with
  fresh weights (sensors and 10 samples mixed into each feature);
- with ``--frame-views``: the sensors cut into the frames of ``--config``'s conv encoder (its
  receptive field and stride), each frame summarised by its mean per sensor (the low-passed
  waveform) or by its mean and log variance (power), also on the top ``--pca`` components:
  which per-frame summary a frame-level encoder would have to keep for the task; and each
  sensor's frame log power mixed into ``--dim`` features by a random matrix (power taken
  before the sensors are mixed, as ``model.sensor_power_path`` does);
- with ``--power-pca k ...``: each sensor's frame log power, standardised per sensor, on the
  top ``k`` principal axes of that standardised log power over the pre-training recordings:
  what a width-``k`` code trained to reconstruct every sensor's frame power with a squared
  error (``model.cnn_frame_power`` through a linear path) would keep at best. With
  ``--power-baseline``, also the same after subtracting each sensor's mean log power over the
  window (the power *change*, as event-related (de)synchronisation is measured). With
  ``--power-pca-mean``, also each sensor's frame mean (the low-passed waveform, which keeps an
  evoked deflection's sign and shape that the variance removes) and log power together.
  With ``--power-whiten s ...``, the same rows again with the sensors first spatially whitened
  by the pre-training recordings' covariance shrunk by ``s`` (units of its mean eigenvalue;
  what ``model.frame_mean_whiten`` does to the frame-mean targets), so that a weak field
  outside the strong components weighs as much as they do.

Random views are redrawn per probe seed. Prints a table; ``--json`` writes the result.

    python benchmarks/spatial_probe.py --data outputs/synthetic_data/synthetic-<hash> \\
        --task state --pca 8 32 128 --json outputs/spatial_probe_state.json
"""

import argparse
import glob
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

from probe_synthetic import data_sample_rate  # noqa: E402

from meg2vec_fairseq.constants import SFREQ  # noqa: E402
from meg2vec_fairseq.conv_geometry import conv_frame_geometry, frame_count  # noqa: E402
from meg2vec_fairseq.probing.report import write_json  # noqa: E402
from meg2vec_fairseq.probing.run import run_probe  # noqa: E402
from meg2vec_fairseq.probing.sources import RawSource, SourceSpec  # noqa: E402
from meg2vec_fairseq.probing.windows import load_manifest_labels  # noqa: E402


class LinearView(RawSource):
    """The sensors through a fixed ``(C, D)`` matrix (or a per-window transform)."""

    def __init__(self, name: str, matrix: np.ndarray = None,
                 transform: Callable[[np.ndarray], np.ndarray] = None) -> None:
        super().__init__()
        self.name, self.matrix, self.transform = name, matrix, transform

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Frames of a batch of ``(B, C, T)`` windows: ``(B, T, D)`` and sample positions."""
        if self.transform is not None:
            windows = self.transform(windows)
        frames, centres = super().frames(windows)
        return (frames if self.matrix is None else frames @ self.matrix), centres

    def describe(self) -> Dict[str, object]:
        """What the view is, for the result JSON."""
        return {"kind": "linear view", "name": self.name}


class FirstConv(RawSource):
    """The first convolution of a config's conv encoder, fresh weights (seeded)."""

    def __init__(self, config: str, seed: int, n_channels: int) -> None:
        super().__init__()
        from meg2vec_fairseq.probing.sources import build_random_model

        model, _ = build_random_model(config, seed, n_channels)
        self.conv = model.feature_extractor.conv_layers[0][0].eval()
        self.name = f"conv1 of {config}"

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Frames of a batch of ``(B, C, T)`` windows: ``(B, T', D)`` and frame centres."""
        import torch

        with torch.no_grad():
            out = self.conv(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)))
        kernel, stride = self.conv.kernel_size[0], self.conv.stride[0]
        centres = np.arange(out.shape[-1]) * stride + (kernel - 1) / 2.0
        return out.transpose(1, 2).numpy(), centres

    def describe(self) -> Dict[str, object]:
        """What the view is, for the result JSON."""
        return {"kind": "first conv", "name": self.name}


class FrameSummary(RawSource):
    """The sensors (or a fixed ``(C, D)`` view of them) cut into frames of ``receptive_field``
    samples every ``stride`` samples, each frame summarised by its mean per feature, and with
    ``log_power`` also by its log variance (appended after the means)."""

    def __init__(self, name: str, receptive_field: int, stride: int, log_power: bool,
                 matrix: np.ndarray = None) -> None:
        super().__init__()
        self.name, self.matrix, self.log_power = name, matrix, log_power
        self.receptive_field, self.stride = receptive_field, stride
        self.min_samples = receptive_field

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Frames of a batch of ``(B, C, T)`` windows: ``(B, T', D)`` and frame centres."""
        if self.matrix is not None:
            windows = np.einsum("bct,cd->bdt", windows, self.matrix)
        n_frames = frame_count(windows.shape[-1], self.receptive_field, self.stride)
        starts = np.arange(n_frames) * self.stride
        cut = windows[..., starts[:, None] + np.arange(self.receptive_field)]  # (B, D, T', rf)
        summary = cut.mean(axis=-1)
        if self.log_power:
            summary = np.concatenate([summary, np.log(cut.var(axis=-1) + 1e-8)], axis=1)
        return np.transpose(summary, (0, 2, 1)), starts + (self.receptive_field - 1) / 2.0

    def describe(self) -> Dict[str, object]:
        """What the view is, for the result JSON."""
        return {"kind": "frame summary", "name": self.name,
                "receptive_field": self.receptive_field, "stride": self.stride}


class MixedFramePower(FrameSummary):
    """Each sensor's log variance over each frame, then mixed by a fixed ``(C * n, D)``
    matrix: what a front end that takes per-sensor power *before* mixing sensors would keep.

    With ``bands`` (``(low, high)`` Hz each, ``None`` for the unfiltered signal), each
    sensor's power is taken in every band (zero-phase Butterworth band-pass of the window)
    and the ``n = len(bands)`` powers of all sensors are mixed together.
    """

    def __init__(self, name: str, receptive_field: int, stride: int,
                 power_matrix: np.ndarray,
                 bands: Sequence[Optional[Tuple[float, float]]] = (None,)) -> None:
        super().__init__(name, receptive_field, stride, log_power=True)
        self.power_matrix, self.bands = power_matrix, list(bands)

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Frames of a batch of ``(B, C, T)`` windows: ``(B, T', D)`` and frame centres."""
        from scipy.signal import butter, sosfiltfilt

        powers = []
        for band in self.bands:
            filtered = windows if band is None else sosfiltfilt(
                butter(4, band, btype="bandpass", fs=SFREQ, output="sos"), windows, axis=-1)
            summary, centres = super().frames(filtered)
            powers.append(summary[..., windows.shape[1]:])
        return np.concatenate(powers, axis=-1) @ self.power_matrix, centres


def frame_views(config: str, pca: Sequence[int], axes: Tuple[np.ndarray, np.ndarray],
                dim: int = 128, power_bands: Sequence[Optional[Tuple[float, float]]] = ()
                ) -> List[SourceSpec]:
    """The ``--frame-views`` rows: frame means, frame means and log variances, the latter on
    the top ``pca`` components, and each sensor's frame log power mixed into ``dim`` features
    by a random matrix (power taken before mixing); with ``power_bands``, one more row that
    mixes each sensor's power in each of these bands (None: unfiltered); frames of
    ``config``'s conv encoder."""
    from meg2vec_fairseq.configs import load_pretraining_config

    geometry = conv_frame_geometry(load_pretraining_config(config).model.conv_feature_layers)
    summaries = [FrameSummary("frame mean", *geometry, log_power=False),
                 FrameSummary("frame mean + log power", *geometry, log_power=True)]
    summaries += [FrameSummary(f"PCA {k} frame mean + log power", *geometry, log_power=True,
                               matrix=axes[1][:, :k]) for k in pca]
    specs = [SourceSpec(view.name, lambda seed, view=view: view) for view in summaries]

    def mixed_power(seed: int) -> MixedFramePower:
        n_channels = axes[1].shape[0]
        matrix = np.random.default_rng(seed).normal(size=(n_channels, dim)) / np.sqrt(n_channels)
        return MixedFramePower(f"frame log power, random projection {dim}", *geometry, matrix)

    specs.append(SourceSpec(f"frame log power, random projection {dim}", mixed_power,
                            seeded=True))
    if power_bands:
        name = f"frame log power in {band_names(power_bands)}, random projection {dim}"

        def mixed_band_power(seed: int) -> MixedFramePower:
            rows = axes[1].shape[0] * len(power_bands)
            matrix = np.random.default_rng(seed).normal(size=(rows, dim)) / np.sqrt(rows)
            return MixedFramePower(name, *geometry, matrix, bands=power_bands)

        specs.append(SourceSpec(name, mixed_band_power, seeded=True))
    return specs


class FramePowerAxes(FrameSummary):
    """Each sensor's frame log power (with ``with_mean``, each sensor's frame mean before
    it), standardised per value, projected on fixed axes; with ``baseline``, each value's mean
    over the window's frames is subtracted first."""

    def __init__(self, name: str, receptive_field: int, stride: int, mean: np.ndarray,
                 scale: np.ndarray, axes: np.ndarray, baseline: bool = False,
                 with_mean: bool = False, matrix: Optional[np.ndarray] = None) -> None:
        super().__init__(name, receptive_field, stride, log_power=True, matrix=matrix)
        self.mean, self.scale, self.axes = mean, scale, axes
        self.baseline, self.with_mean = baseline, with_mean

    def summaries(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Unstandardised frame values of ``(B, C, T)`` windows: ``(B, T', C or 2 C)``."""
        summary, centres = super().frames(windows)  # means, then log variances
        return (summary if self.with_mean else summary[..., windows.shape[1]:]), centres

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Frames of a batch of ``(B, C, T)`` windows: ``(B, T', k)`` and frame centres."""
        values, centres = self.summaries(windows)
        values = (values - self.mean) / self.scale
        if self.baseline:
            values = values - values.mean(axis=1, keepdims=True)
        return values @ self.axes, centres


def power_pca_views(pretrain_dir: str, max_files: int, config: str, ks: Sequence[int],
                    baseline: bool, with_mean: bool = False,
                    whitenings: Sequence[Tuple[float, np.ndarray]] = ()) -> List[SourceSpec]:
    """The ``--power-pca`` rows: frame log power on the top ``k`` axes of its own covariance
    over the first ``max_files`` pre-training segments, and with ``with_mean`` the same for
    frame means and log powers together (per-segment baseline removed first for the
    ``baseline`` rows, so that their axes are those of the changes). Each of ``whitenings``
    (shrinkage, ``(C, C)`` symmetric matrix) adds the same rows for the whitened sensors. The
    segments are read once."""
    from meg2vec_fairseq.configs import load_pretraining_config

    geometry = conv_frame_geometry(load_pretraining_config(config).model.conv_feature_layers)
    files = sorted(glob.glob(os.path.join(pretrain_dir, "**", "*.npy"), recursive=True))
    if not files:
        raise SystemExit(f"error: no .npy segments under {pretrain_dir}")
    recordings = [np.load(path).astype(np.float64)[None] for path in files[:max_files]]
    specs = []
    for shrinkage, matrix in [(None, None), *whitenings]:
        specs += _power_pca_rows(recordings, geometry, ks, baseline, with_mean, shrinkage,
                                 matrix)
    return specs


def _power_pca_rows(recordings: Sequence[np.ndarray], geometry: Tuple[int, int],
                    ks: Sequence[int], baseline: bool, with_mean: bool,
                    shrinkage: Optional[float], matrix: Optional[np.ndarray]
                    ) -> List[SourceSpec]:
    """The :func:`power_pca_views` rows of one view of the sensors (``matrix`` None: as
    they are; else whitened with ``shrinkage``), from ``(1, C, T)`` pre-training segments."""
    cutter = FramePowerAxes("values", *geometry, np.zeros(1), np.ones(1), np.eye(1),
                            with_mean=True, matrix=matrix)
    summaries = [cutter.summaries(recording)[0][0]
                 for recording in recordings]  # (T', 2 C) each: means, then log powers
    n_channels = summaries[0].shape[1] // 2
    specs = []
    for means in ([False, True] if with_mean else [False]):
        segments = [s if means else s[:, n_channels:] for s in summaries]
        values = np.concatenate(segments)
        mean, scale = values.mean(axis=0), np.maximum(values.std(axis=0), 1e-8)
        what = "frame mean + log power" if means else "frame log power"
        if matrix is not None:
            what = f"whitened ({shrinkage:g}) {what}"
        for corrected in ([False, True] if baseline else [False]):
            standard = [(segment - mean) / scale for segment in segments]
            if corrected:
                standard = [segment - segment.mean(axis=0) for segment in standard]
            eigenvalues, eigenvectors = np.linalg.eigh(np.cov(np.concatenate(standard).T))
            order = np.argsort(eigenvalues)[::-1]
            for k in ks:
                name = f"{what}{' change' if corrected else ''}, top {k} axes of its own"
                view = FramePowerAxes(name, *geometry, mean, scale,
                                      eigenvectors[:, order[:k]], baseline=corrected,
                                      with_mean=means, matrix=matrix)
                specs.append(SourceSpec(name, lambda seed, view=view: view))
    return specs


def band_names(bands: Sequence[Optional[Tuple[float, float]]]) -> str:
    """``all, 8-13 Hz, ...`` for a list of bands (None: unfiltered)."""
    return ", ".join("all" if band is None else f"{band[0]:g}-{band[1]:g} Hz" for band in bands)


def parse_band(text: str) -> Optional[Tuple[float, float]]:
    """``"all"`` -> None (unfiltered); ``"8-13"`` -> ``(8.0, 13.0)`` (argparse type)."""
    if text == "all":
        return None
    try:
        low, high = (float(part) for part in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a band LOW-HIGH in Hz or 'all'") from None
    if not 0 < low < high < SFREQ / 2:
        raise argparse.ArgumentTypeError(
            f"band {text!r} must satisfy 0 < low < high < {SFREQ / 2:g} Hz (Nyquist)")
    return low, high


def whitening(axes: Tuple[np.ndarray, np.ndarray], shrinkage: float) -> np.ndarray:
    """The model's shrunk whitening (``spatial_filter.whitening_matrix``) of the sensor
    covariance whose eigenvalues and eigenvectors are ``axes``: ``(C, C)``, symmetric."""
    import torch

    from meg2vec_fairseq.models.spatial_filter import whitening_matrix

    eigenvalues, eigenvectors = axes
    covariance = torch.from_numpy((eigenvectors * eigenvalues) @ eigenvectors.T)
    return whitening_matrix(covariance, shrinkage).double().numpy()


def zscore_windows(windows: np.ndarray) -> np.ndarray:
    """Each sensor of each window z-scored over time."""
    centred = windows - windows.mean(axis=-1, keepdims=True)
    return centred / np.maximum(centred.std(axis=-1, keepdims=True), 1e-8)


def principal_axes(pretrain_dir: str, max_files: int) -> Tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of the sensor covariance of the pre-training
    segments (the first ``max_files`` ``.npy`` files under ``pretrain_dir``)."""
    files = sorted(glob.glob(os.path.join(pretrain_dir, "**", "*.npy"), recursive=True))
    if not files:
        raise SystemExit(f"error: no .npy segments under {pretrain_dir}")
    data = np.concatenate([np.load(f).astype(np.float64) for f in files[:max_files]], axis=1)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(data))
    order = np.argsort(eigenvalues)[::-1]
    return eigenvalues[order], eigenvectors[:, order]


def add_data_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    """The options every probe of a ``probe_synthetic`` data directory takes (also used by
    ``benchmarks/target_probe.py``)."""
    parser.add_argument("--data", required=True,
                        help="a probe_synthetic data directory (with pretrain/ and probe/)")
    parser.add_argument("--task", default=task, help="labels_<task>.tsv of probe/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--context", type=float, default=1.0,
                        help="signal each side of a span (s), as probe_synthetic's --context")
    parser.add_argument("--json", default=None, help="write the result here")


def load_task(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The labelled windows of ``args.task`` in ``args.data``; a usage error naming the
    missing file when the directory has no probe data, or the rate when its ``data.json``
    says it was generated at another rate than the 250 Hz these views assume."""
    labels = os.path.join(args.data, "probe", f"labels_{args.task}.tsv")
    for path in (os.path.join(args.data, "probe", "train.tsv"), labels):
        if not os.path.isfile(path):
            parser.error(f"--data {args.data}: {path} does not exist (run "
                         "benchmarks/probe_synthetic.py first)")
    rate = data_sample_rate(args.data)
    if rate != SFREQ:
        parser.error(f"--data {args.data}: generated at {rate:g} Hz (probe_synthetic.py "
                     f"--sfreq); these fixed views and bands assume {SFREQ:g} Hz")
    return load_manifest_labels(os.path.join(args.data, "probe", "train.tsv"), labels,
                                sample_rate=SFREQ, context=args.context)


def views(args, n_channels: int, axes: Tuple[np.ndarray, np.ndarray]) -> List[SourceSpec]:
    """The probed sources, in table order."""
    def rotation(seed: int) -> LinearView:
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n_channels, n_channels)))
        return LinearView("random rotation", q)

    def projection(seed: int) -> LinearView:
        matrix = np.random.default_rng(seed).normal(size=(n_channels, args.dim))
        return LinearView(f"random projection {args.dim}", matrix / np.sqrt(n_channels))

    specs = [SourceSpec("raw", lambda seed: RawSource()),
             SourceSpec("raw z-scored per window",
                        lambda seed: LinearView("raw z-scored per window",
                                                transform=zscore_windows)),
             SourceSpec("random rotation", rotation, seeded=True),
             SourceSpec(f"random projection {args.dim}", projection, seeded=True)]
    for k in args.pca:
        view = LinearView(f"PCA {k}", axes[1][:, :k])  # fixed: one view for every seed
        specs.append(SourceSpec(view.name, lambda seed, view=view: view))
    if args.config:
        specs.append(SourceSpec(f"conv1 of {args.config}",
                                lambda seed: FirstConv(args.config, seed, n_channels),
                                seeded=True))
    if args.frame_views:
        specs += frame_views(args.frame_config, args.pca, axes, args.dim, args.power_bands)
    if args.power_pca:
        specs += power_pca_views(os.path.join(args.data, "pretrain"), args.pca_files,
                                 args.frame_config, args.power_pca, args.power_baseline,
                                 with_mean=args.power_pca_mean,
                                 whitenings=[(shrinkage, whitening(axes, shrinkage))
                                             for shrinkage in args.power_whiten])
    return specs


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, task="state")
    parser.add_argument("--pca", type=int, nargs="*", default=[8, 32, 128],
                        help="numbers of principal components to probe")
    parser.add_argument("--dim", type=int, default=128, help="random projection width")
    parser.add_argument("--config", default="meg2vec_tiny",
                        help="config whose first conv is probed ('' to skip)")
    parser.add_argument("--frame-views", action="store_true",
                        help="add per-frame summaries (mean; mean and log variance) of the "
                        "sensors and of the top --pca components, frames of --frame-config")
    parser.add_argument("--frame-config", default="meg2vec_tiny",
                        help="config whose conv encoder's receptive field and stride cut the "
                        "frames of --frame-views")
    parser.add_argument("--power-bands", type=parse_band, nargs="*", default=[],
                        help="with --frame-views: one more row, each sensor's frame log power "
                        "in these bands (LOW-HIGH Hz, 'all' unfiltered) mixed by one random "
                        "matrix")
    parser.add_argument("--power-pca", type=int, nargs="*", default=[],
                        help="rows of each sensor's standardised frame log power on the top k "
                        "axes of its own covariance (frames of --frame-config)")
    parser.add_argument("--power-baseline", action="store_true",
                        help="with --power-pca: also rows of the power change (each sensor's "
                        "mean over the window subtracted)")
    parser.add_argument("--power-pca-mean", action="store_true",
                        help="with --power-pca: also rows of each sensor's frame mean and "
                        "log power together on the top k axes of their own covariance")
    parser.add_argument("--power-whiten", type=float, nargs="*", default=[],
                        help="with --power-pca: the same rows again for the sensors spatially "
                        "whitened by the pre-training covariance shrunk by each value (> 0, "
                        "units of its mean eigenvalue)")
    parser.add_argument("--pca-files", type=int, default=40,
                        help="pre-training segments read for the PCA")
    args = parser.parse_args(argv)
    if args.dim < 1 or any(k < 1 for k in args.pca + args.power_pca):
        parser.error("--dim, --pca and --power-pca must be >= 1")
    if any(not s > 0 for s in args.power_whiten) or (args.power_whiten and not args.power_pca):
        parser.error("--power-whiten values must be > 0 and need --power-pca")
    dataset = load_task(parser, args)
    axes = principal_axes(os.path.join(args.data, "pretrain"), args.pca_files)
    if any(k > dataset.n_channels for k in args.pca + args.power_pca):
        parser.error(f"--pca and --power-pca values must be <= the {dataset.n_channels} "
                     "sensors")
    result = run_probe(dataset, views(args, dataset.n_channels, axes), args.seeds)
    shares = {str(k): float(axes[0][:k].sum() / axes[0].sum()) for k in args.pca}
    result["pca_variance_share"] = shares
    print(f"{args.task}: test macro-F1 of the linear probe (mean ± std over seeds "
          f"{args.seeds}); chance {result['chance']['macro_f1']:.3f}")
    for source in result["sources"]:
        f1 = source["macro_f1"]
        print(f"  {source['name']:28s} {f1['mean']:.3f} ± {f1['std']:.3f}")
    print("  variance share of the top k components: "
          + ", ".join(f"{k}: {v:.2f}" for k, v in shares.items()))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
