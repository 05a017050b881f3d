#!/usr/bin/env python
"""Linear probe of frozen features on labelled MEG: a checkpoint vs random-init vs raw sensors.

Examples::

    # your own labels: a manifest plus a labels TSV (format: docs/probing.md)
    python tools/probe.py --manifest manifests/demo/valid.tsv --labels labels.tsv \\
        --checkpoint checkpoints/meg2vec_tiny/checkpoint_best.pt --random-init meg2vec_tiny \\
        --raw --json probe.json --plot probe.png

    # LibriBrain speech detection with pnpl's partitions (data already on disk)
    python tools/probe.py --libribrain speech --data-path data/LibriBrain \\
        --channel-stats manifests/libribrain --checkpoint ckpt.pt --raw

Every source goes through the same windows, pooling, standardisation, classifier and seeds.
Prints one table (test macro-F1 and balanced accuracy, mean ± std over seeds, and chance).
Exit status: 0, 1 for bad data (one ``error:`` line naming the file and row), 2 for usage
errors (impossible option values, unwritable --json/--plot), 130 when interrupted.
"""

import argparse
import logging
import os
import sys
import warnings

from meg2vec_fairseq import register_with_fairseq
from meg2vec_fairseq.cli import (
    ToolParser,
    check_outputs,
    finite_float,
    first_line,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    run_main,
)
from meg2vec_fairseq.constants import MAX_ABS_VALUE, SFREQ
from meg2vec_fairseq.features import parse_layer
from meg2vec_fairseq.probing.classifier import DEFAULT_C_GRID
from meg2vec_fairseq.probing.libribrain_labels import LIBRIBRAIN_TASKS
from meg2vec_fairseq.probing.pooling import POOLINGS
from meg2vec_fairseq.probing.report import format_table, plot_formats
from meg2vec_fairseq.probing.run import probe

#: How library messages name a parameter -> the option a user of this tool gives.
FLAGS = (
    ("random_init ", "--random-init "),
    ("allow_overlap=True", "--allow-overlap"),
    ("max_abs_value=0", "--max-abs-value 0"),
    ("a longer context", "--context"),
)


def as_flags(message: str) -> str:
    """A library message in this tool's words: parameters named as its options."""
    for parameter, flag in FLAGS:
        message = message.replace(parameter, flag)
    return message


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("labelled dataset (one of)")
    data.add_argument("--manifest", nargs="+", help="fairseq TSV manifest(s) of .npy segments")
    data.add_argument("--labels", help="labels TSV: segment, label[, start, end][, split]")
    data.add_argument("--libribrain", choices=LIBRIBRAIN_TASKS,
                      help="LibriBrain task through pnpl (train / validation / test partitions)")
    data.add_argument("--data-path", help="pnpl data_path of LibriBrain (no download)")
    data.add_argument("--channel-stats",
                      help="channel_stats.npz (or its manifest directory) of pre-training; "
                      "LibriBrain windows get the same standardisation and clipping")
    data.add_argument("--tmin", type=finite_float, default=0.0,
                      help="LibriBrain window start (s)")
    data.add_argument("--tmax", type=finite_float, default=0.5,
                      help="LibriBrain window end (s), after --tmin")
    data.add_argument("--max-windows", type=positive_int, default=None,
                      help="LibriBrain: at most this many windows per partition (random)")
    data.add_argument("--sample-rate", type=positive_float, default=SFREQ,
                      help="sampling rate of the manifest's segments (Hz, default %(default)g)")
    data.add_argument("--allow-overlap", action="store_true",
                      help="only warn (instead of failing) when windows of one segment overlap "
                      "across splits")
    data.add_argument("--max-abs-value", type=nonnegative_float,
                      default=MAX_ABS_VALUE,
                      help="refuse a window with |x| above this (segments are z-scored; "
                      "0 disables; default 1000)")
    data.add_argument("--context", type=nonnegative_float, default=0.0,
                      help="seconds of signal each side of a labelled span that the sources see "
                      "(pooling still covers the span only; default 0)")

    src = parser.add_argument_group("feature sources (any combination, at least one)")
    src.add_argument("--checkpoint", help="meg2vec checkpoint (.pt)")
    src.add_argument("--random-init", metavar="CONFIG",
                     help="same architecture with fresh weights (one draw per seed): a "
                     "pre-training yaml (path or shipped name, e.g. meg2vec_tiny) or a "
                     "checkpoint whose saved config is used")
    src.add_argument("--raw", action="store_true", help="the preprocessed sensors themselves")
    src.add_argument("--layer", default="last",
                     help="Transformer layer (0-based), 'last' (default), 'cnn', or depths "
                     "joined by '+' read side by side ('cnn+last')")

    probe = parser.add_argument_group("probe")
    probe.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    probe.add_argument("--pooling", choices=POOLINGS, default="meanstd",
                       help="per window: mean of the frames, or mean and std (default)")
    probe.add_argument("--train-fraction", type=fraction, default=0.8,
                       help="random stratified fraction of the training windows per seed")
    probe.add_argument("--C", type=positive_float, nargs="+", default=list(DEFAULT_C_GRID),
                       dest="c_grid", help="inverse regularisation strengths tried on valid")
    probe.add_argument("--json", help="write the full result here")
    probe.add_argument("--plot", help="write a figure (png/pdf) here")
    probe.add_argument("--quiet", action="store_true", help="no per-seed progress lines")
    return parser


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) found before any work: impossible combinations and outputs."""
    if not (args.checkpoint or args.random_init or args.raw):
        parser.error("give at least one of --checkpoint, --random-init, --raw")
    if bool(args.libribrain) == bool(args.manifest or args.labels):
        parser.error("give either --manifest and --labels, or --libribrain and --data-path")
    if args.libribrain and not args.data_path:
        parser.error("--libribrain needs --data-path")
    if not args.libribrain and not (args.manifest and args.labels):
        parser.error("--manifest and --labels go together")
    if args.tmax <= args.tmin:
        parser.error(f"--tmax {args.tmax} must be after --tmin {args.tmin}")
    try:
        args.layer = parse_layer(args.layer)
    except ValueError as err:  # "layer must be ..."
        parser.error(f"--{err}")
    check_outputs(parser, files=[("--json", args.json), ("--plot", args.plot)])
    if args.plot:
        extension = os.path.splitext(args.plot)[1].lower().lstrip(".")
        formats = plot_formats()
        if extension and extension not in formats:
            parser.error(f"--plot {args.plot}: unknown plot format {extension!r} "
                         f"(one of {', '.join(formats)})")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint or args.random_init:
        register_with_fairseq()  # imports fairseq now: it leaves the root logger at DEBUG
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
    check_usage(parser, args)
    try:
        result = probe(
            manifest=args.manifest, labels=args.labels, libribrain=args.libribrain,
            data_path=args.data_path, channel_stats=args.channel_stats, tmin=args.tmin,
            tmax=args.tmax, max_windows=args.max_windows, sample_rate=args.sample_rate,
            context=args.context, allow_overlap=args.allow_overlap,
            max_abs_value=args.max_abs_value, checkpoint=args.checkpoint,
            random_init=args.random_init, raw=args.raw, layer=args.layer, seeds=args.seeds,
            pooling=args.pooling, train_fraction=args.train_fraction, c_grid=args.c_grid,
            json_path=args.json, plot_path=args.plot,
            log=None if args.quiet else (lambda line: print(line, file=sys.stderr)),
            warn=lambda message: print(f"warning: {as_flags(message)}", file=sys.stderr),
        )
    except (ValueError, OSError) as err:  # ProbeError, CheckpointError, unreadable files
        print(f"error: {as_flags(first_line(err))}", file=sys.stderr)
        return 1
    print(format_table(result))
    for path in (args.json, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
