#!/usr/bin/env python
"""Write meg2vec features of every segment of a manifest to ``.npy`` files.

Example::

    python tools/extract_features.py --checkpoint checkpoints/meg2vec_tiny/checkpoint_best.pt \\
        --manifest manifests/demo/valid.tsv --dest features/demo_valid --layer last

Writes ``DEST/<segment relative path>`` (one ``(frames, dim)`` float32 array per segment,
each written atomically) and ``DEST/features.tsv`` (root line, then ``path<TAB>frames``).
Exit status: 0, 1 for bad data or checkpoint (one ``error:`` line naming the file), 2 for
usage errors (e.g. --dest an existing file), 130 when interrupted.
"""

import argparse
import sys

from meg2vec_fairseq.cli import ToolParser, check_outputs, first_line, run_main
from meg2vec_fairseq.feature_writer import write_manifest_features
from meg2vec_fairseq.features import parse_layer


def layer_option(text: str):
    """argparse type of ``--layer``: an integer, 'last', 'cnn' or depths joined by '+'."""
    try:
        return parse_layer(text)
    except ValueError as err:
        # "layer must be ..." -> argparse's "argument --layer: must be ..."
        raise argparse.ArgumentTypeError(str(err).replace("layer ", "", 1)) from None


def main(argv=None) -> int:
    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", required=True, help="meg2vec checkpoint (.pt) from fairseq-hydra-train"
    )
    parser.add_argument("--manifest", required=True, help="fairseq TSV manifest of .npy segments")
    parser.add_argument("--dest", required=True, help="output directory for the feature files")
    parser.add_argument(
        "--layer",
        default="last",
        type=layer_option,
        help="Transformer layer to read (0-based integer), 'last' (default), 'cnn' for the "
        "convolutional encoder output, or depths joined by '+' whose features are written side "
        "by side ('cnn+last')",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    check_outputs(parser, dirs=[("--dest", args.dest)])  # before the model is loaded
    try:
        summary = write_manifest_features(
            args.checkpoint, args.manifest, args.dest, args.layer, args.device
        )
    except (ValueError, OSError) as err:  # CheckpointError, MegDataError, bad layer, disk
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    print(
        f"wrote features of {summary['segments']} segments ({summary['frames']} frames x "
        f"{summary['dim']} dims) to {args.dest} (index: {summary['index']})"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
