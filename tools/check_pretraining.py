#!/usr/bin/env python
"""Check a pre-training log for failed learning: stuck (near chance, or at its starting accuracy),
memorising, codebook collapse.

Example::

    fairseq-hydra-train --config-dir config/pretraining --config-name meg2vec_small \\
        common.user_dir=meg2vec_fairseq task.data=manifests/mine 2>&1 | tee -a train.log
    python tools/check_pretraining.py train.log

Reads fairseq's ``simple`` or ``json`` log lines (the number of negatives from the
configuration it prints). The rules and the runs they come from:
docs/pretraining.md ("Is my run learning?"). Prints what it read and one line per problem.
Exit status: 0 healthy, 3 a problem found, 1 an unreadable log or one without training
statistics (one ``error:`` line naming the file), 2 usage errors, 130 when interrupted.
"""

import sys

from meg2vec_fairseq.cli import (
    ToolParser,
    first_line,
    fraction,
    input_file_problem,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    run_main,
)
from meg2vec_fairseq.errors import InputError
from meg2vec_fairseq.training_health import (
    MAX_ACCURACY_GAP,
    MIN_CODE_PERPLEXITY,
    MIN_UPDATES,
    check_pretraining_log,
)

#: Exit status when the log shows a problem (1 and 2 are taken by bad input and usage).
EXIT_PROBLEM = 3


def main(argv=None) -> int:
    parser = ToolParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="output of fairseq-hydra-train (stdout and stderr)")
    parser.add_argument("--negatives", type=positive_int, default=None,
                        help="model.num_negatives (default: read from the log)")
    parser.add_argument("--min-updates", type=nonnegative_int, default=MIN_UPDATES,
                        help="judge 'stuck near chance' from this many updates on "
                        f"(default {MIN_UPDATES})")
    parser.add_argument("--max-gap", type=fraction, default=MAX_ACCURACY_GAP,
                        help="training minus validation contrastive accuracy above which the "
                        f"encoder is memorising (default {MAX_ACCURACY_GAP})")
    parser.add_argument("--min-code-perplexity", type=nonnegative_float,
                        default=MIN_CODE_PERPLEXITY,
                        help=f"codebook collapse below this (default {MIN_CODE_PERPLEXITY:g})")
    args = parser.parse_args(argv)
    problem = input_file_problem(args.log)
    if problem:
        print(f"error: {args.log}: {problem}", file=sys.stderr)
        return 1
    try:
        with open(args.log, encoding="utf-8", errors="replace") as f:
            text = f.read()
        report = check_pretraining_log(text, source=args.log, num_negatives=args.negatives,
                                       min_updates=args.min_updates,
                                       max_accuracy_gap=args.max_gap,
                                       min_code_perplexity=args.min_code_perplexity)
    except InputError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    chance = f" (chance {report.chance:.3f})" if report.chance is not None else ""
    print(f"{args.log}: {report.updates} updates, contrastive accuracy "
          f"{report.train_accuracy:.3f}{chance}")
    if report.valid_accuracy is not None:
        code = (f", code perplexity {report.code_perplexity:.1f}"
                if report.code_perplexity is not None else "")
        print(f"last validation (update {report.valid_updates}): accuracy "
              f"{report.valid_accuracy:.3f} vs training {report.train_accuracy_at_valid:.3f}"
              f"{code}")
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    if report.healthy:
        print("healthy by these rules")
    return 0 if report.healthy else EXIT_PROBLEM


if __name__ == "__main__":
    run_main(main)
