#!/usr/bin/env python
"""Generate synthetic MEG-like recordings as ``.npy`` segments + fairseq manifests (offline demo).

Example::

    python tools/make_demo_data.py --dest manifests/demo --recordings 12 --seconds 40

Writes ``DEST/train.tsv``, ``DEST/valid.tsv`` (split by recording), ``DEST/segments/`` and
``DEST/events.tsv`` (ground-truth transient events: segment, onset sample, kind).
"""

import argparse
import sys

from meg2vec_fairseq.synthetic import SyntheticMEGConfig, write_synthetic_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dest", required=True, help="output manifest directory")
    parser.add_argument("--recordings", type=int, default=12, help="number of recordings")
    parser.add_argument("--seconds", type=float, default=40.0, help="seconds per recording")
    parser.add_argument("--segment-seconds", type=float, default=5.0, help="segment length (s)")
    parser.add_argument("--valid-recordings", type=int, default=2, help="recordings for valid")
    parser.add_argument("--channels", type=int, default=306, help="number of MEG channels")
    parser.add_argument("--sfreq", type=float, default=250.0, help="sampling rate (Hz)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    args = parser.parse_args(argv)
    counts = write_synthetic_dataset(
        args.dest,
        n_recordings=args.recordings,
        seconds_per_recording=args.seconds,
        segment_seconds=args.segment_seconds,
        n_valid_recordings=args.valid_recordings,
        seed=args.seed,
        config=SyntheticMEGConfig(n_channels=args.channels, sfreq=args.sfreq),
        dtype=args.dtype,
    )
    print(
        f"wrote {counts['train']} train and {counts['valid']} valid segments of "
        f"{args.channels} x {int(args.segment_seconds * args.sfreq)} samples to {args.dest}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
