#!/usr/bin/env python
"""Generate synthetic MEG-like recordings as ``.npy`` segments + fairseq manifests (offline demo).

Example::

    python tools/make_demo_data.py --dest manifests/demo --recordings 12 --seconds 40

Writes ``DEST/train.tsv``, ``DEST/valid.tsv`` (split by recording), ``DEST/segments/`` and
``DEST/events.tsv`` (ground-truth transient events: segment, onset sample, kind).
"""

import argparse
import sys

from meg2vec_fairseq.cli import (
    ToolParser,
    check_outputs,
    first_line,
    nonnegative_int,
    positive_float,
    positive_int,
    run_main,
)
from meg2vec_fairseq.constants import N_SENSORS, SFREQ
from meg2vec_fairseq.synthetic import SyntheticMEGConfig, write_synthetic_dataset


def main(argv=None) -> int:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", required=True, help="output manifest directory")
    parser.add_argument("--recordings", type=positive_int, default=12,
                        help="number of recordings")
    parser.add_argument("--seconds", type=positive_float, default=40.0,
                        help="seconds per recording (at least one segment)")
    parser.add_argument("--segment-seconds", type=positive_float, default=5.0,
                        help="segment length (s)")
    parser.add_argument("--valid-recordings", type=nonnegative_int, default=2,
                        help="recordings for valid (fewer than --recordings; 0: an empty "
                        "valid.tsv, train with dataset.disable_validation=true)")
    parser.add_argument("--channels", type=positive_int, default=N_SENSORS,
                        help="number of MEG channels")
    parser.add_argument("--sfreq", type=positive_float, default=SFREQ, help="sampling rate (Hz)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    args = parser.parse_args(argv)
    segment_samples = int(round(args.segment_seconds * args.sfreq))
    if segment_samples < 1:
        parser.error(f"--segment-seconds {args.segment_seconds} at --sfreq {args.sfreq} is "
                     "less than one sample")
    if int(round(args.seconds * args.sfreq)) < segment_samples:  # would write zero segments
        parser.error(f"--seconds {args.seconds} is shorter than one segment "
                     f"(--segment-seconds {args.segment_seconds}): no segment would be written")
    if args.valid_recordings >= args.recordings:
        parser.error(f"--valid-recordings {args.valid_recordings} must be fewer than "
                     f"--recordings {args.recordings} (training needs at least one)")
    check_outputs(parser, dirs=[("--dest", args.dest)])
    try:
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
    except (ValueError, OSError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    if not counts["valid"]:
        print(f"note: {args.dest}/valid.tsv is empty; train with dataset.disable_validation=true")
    print(
        f"wrote {counts['train']} train and {counts['valid']} valid segments of "
        f"{args.channels} x {int(args.segment_seconds * args.sfreq)} samples to {args.dest}"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
