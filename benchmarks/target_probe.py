#!/usr/bin/env python
"""How much of a probe task is in the pre-training targets? (diagnostic for issue 9)

The frozen random-projection targets (``model.target_codebook_size``) decide what masked
prediction rewards: an encoder only has to keep what changes the code of a masked frame. This
script computes the targets of the labelled windows of a ``benchmarks/probe_synthetic.py`` data
directory, without any training, and probes them with the benchmark's linear probe (same
pooling, classifier and seeds):

- ``codes``: each frame's code as a one-hot vector (the mean over a window is its code
  histogram): what the contrastive task can distinguish;
- ``projection``: the l2-normalised random projection before the codebook (the continuous
  quantity the code rounds).

Each ``--targets`` entry is a set of target options, ``name`` or ``key=value,key=value`` with
keys ``crop_norm``, ``whiten``, ``codebooks`` (the quantizer's options), ``dim`` (codebook
dimension), ``size`` (codebook size) and ``spectral_whiten`` (a candidate that is not a model
option: before the projection, every sensor filtered to even out the batch's mean power
spectrum, :func:`spectral_whitening`). A target that keeps a task better gives masked
prediction a reason to encode it. The projection and codebook are redrawn per probe seed.

    python benchmarks/target_probe.py --data outputs/synthetic_data/synthetic-<hash> \\
        --task event --targets shipped spectral_whiten=1 whiten=1
"""

import argparse
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spatial_probe import add_data_arguments, load_task  # noqa: E402

from meg2vec_fairseq.probing.report import write_json  # noqa: E402
from meg2vec_fairseq.probing.run import run_probe  # noqa: E402
from meg2vec_fairseq.probing.sources import SourceSpec  # noqa: E402

#: The shipped configs' targets (``_meg2vec_common.yaml``).
SHIPPED = {"crop_norm": "center", "whiten": 0.0, "spectral_whiten": 0.0, "dim": 16,
           "size": 1024, "codebooks": 1}
MODES = ("codes", "projection")


def config_frame(config: str) -> Tuple[int, int]:
    """Receptive field and hop (samples) of a shipped config's conv stack: one target frame."""
    from meg2vec_fairseq.configs import load_pretraining_config
    from meg2vec_fairseq.conv_geometry import conv_frame_geometry

    return conv_frame_geometry(load_pretraining_config(config).model.conv_feature_layers)


def parse_target(text: str) -> Dict[str, object]:
    """``shipped`` or ``key=value,...`` (overriding the shipped options) -> options."""
    options = dict(SHIPPED)
    if text == "shipped":
        return options
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in SHIPPED:
            raise ValueError(f"--targets {text!r}: expected key=value with keys {sorted(SHIPPED)}")
        try:
            options[key] = value if key == "crop_norm" else type(SHIPPED[key])(float(value))
        except ValueError:
            raise ValueError(f"--targets {text!r}: {key}={value!r} is not a number") from None
    return options


def spectral_whitening(x, shrinkage: float):
    """Each sensor of a centred ``(B, C, T)`` batch filtered with the zero-phase gain
    ``(P(f) + shrinkage * mean(P)) ** -1/2``, ``P`` the batch's mean power spectrum (MEG's
    1/f low end attenuated towards the mean; zero-padded to twice the length, no wrap)."""
    import torch

    n = x.size(-1)
    x = x - x.mean(dim=-1, keepdim=True)
    spectrum = torch.fft.rfft(x, n=2 * n, dim=-1)
    power = spectrum.abs().pow(2).mean(dim=(0, 1))
    gain = (power + shrinkage * power.mean()).clamp(min=1e-20).rsqrt()
    return torch.fft.irfft(spectrum * gain, n=2 * n, dim=-1)[..., :n]


class TargetView:
    """Targets of the windows under one set of options, as probe frames."""

    kind = "targets"

    def __init__(self, name: str, options: Dict[str, object], mode: str, seed: int,
                 n_channels: int, frame: Tuple[int, int]) -> None:
        from meg2vec_fairseq.models.targets import RandomProjectionQuantizer

        self.name, self.options, self.mode, self.min_samples = name, options, mode, frame[0]
        self.quantizer = RandomProjectionQuantizer(
            n_channels, frame[0], frame[1], codebook_size=int(options["size"]),
            codebook_dim=int(options["dim"]), seed=seed, crop_norm=str(options["crop_norm"]),
            whiten=float(options["whiten"]), codebooks=int(options["codebooks"]))

    def frames(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(B, C, T)`` windows -> ``(B, frames, D)`` targets and frame centres (samples)."""
        import torch

        quantizer = self.quantizer
        source = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if self.options["spectral_whiten"] > 0:
            source = spectral_whitening(source, float(self.options["spectral_whiten"]))
        if self.mode == "projection":
            out = quantizer.project(source)
        else:
            out = torch.nn.functional.one_hot(quantizer.codes(source), quantizer.num_vars)
        out = out.flatten(2).float().numpy()  # codebooks side by side
        centres = np.arange(out.shape[1]) * quantizer.stride + (quantizer.receptive_field - 1) / 2
        return out, centres

    def describe(self) -> Dict[str, object]:
        """What the view is, for the result JSON."""
        return {"kind": self.kind, "name": self.name, "options": self.options}


def views(targets: Sequence[str], modes: Sequence[str], n_channels: int,
          frame: Tuple[int, int]) -> List[SourceSpec]:
    """One seeded source per target option set and mode, in table order."""
    specs = []
    for text in targets:
        options = parse_target(text)
        for mode in modes:
            name = f"{text} {mode}"
            specs.append(SourceSpec(name, lambda seed, name=name, options=options, mode=mode:
                                    TargetView(name, options, mode, seed, n_channels, frame),
                                    seeded=True))
    return specs


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, task="event")
    parser.add_argument("--targets", nargs="+", default=["shipped"],
                        help="target option sets: 'shipped' or key=value,... (see above)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--config", default="meg2vec_tiny",
                        help="shipped config whose conv stack sets the target frame")
    args = parser.parse_args(argv)
    try:
        for text in args.targets:
            parse_target(text)
    except ValueError as error:
        parser.error(str(error))
    dataset = load_task(parser, args)
    frame = config_frame(args.config)
    result = run_probe(dataset, views(args.targets, args.modes, dataset.n_channels, frame),
                       args.seeds)
    print(f"{args.task}: test macro-F1 of the linear probe on the targets (mean ± std over "
          f"seeds {args.seeds}); chance {result['chance']['macro_f1']:.3f}")
    for source in result["sources"]:
        f1 = source["macro_f1"]
        print(f"  {source['name']:40s} {f1['mean']:.3f} ± {f1['std']:.3f}")
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
