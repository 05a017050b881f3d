#!/usr/bin/env python
"""Summarise a demo run: how loss, contrastive accuracy and code perplexity moved."""

import argparse
import sys

from meg2vec_fairseq.fairseq_logs import parse_fairseq_log
from meg2vec_fairseq.training_health import logged_num_negatives


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("train_log", help="output of fairseq-hydra-train")
    parser.add_argument("validate_log", help="output of fairseq-validate")
    parser.add_argument("--negatives", type=int, default=None,
                        help="num_negatives of the model (default: read from the configuration "
                        "fairseq prints at the start of the training log)")
    parser.add_argument("--codes", type=int, default=1024,
                        help="codebook size: model.target_codebook_size (the tiny config's "
                        "1024), or latent_groups x latent_vars (640) for the Gumbel quantizer")
    args = parser.parse_args(argv)
    with open(args.train_log, encoding="utf-8") as f:
        train_text = f.read()
    train = [r for r in parse_fairseq_log(train_text, "train_inner") if "loss" in r]
    negatives = args.negatives if args.negatives is not None else logged_num_negatives(train_text)
    if negatives is None:
        print(f"error: {args.train_log}: no num_negatives in the printed configuration; "
              "pass --negatives", file=sys.stderr)
        return 1
    with open(args.validate_log, encoding="utf-8") as f:
        valid = parse_fairseq_log(f.read(), "valid")
    if not train or not valid:
        print("error: no training or validation statistics found in the logs", file=sys.stderr)
        return 1
    first, last, final = train[0], train[-1], valid[-1]
    chance = 1.0 / (negatives + 1)
    print(f"{'':24s}{'first log':>12s}{'last log':>12s}")
    for key in ("num_updates", "loss", "accuracy", "code_perplexity", "prob_perplexity"):
        print(f"{key:24s}{first.get(key, float('nan')):12.3f}{last.get(key, float('nan')):12.3f}")
    print(
        f"validation: loss {final.get('loss', float('nan')):.3f}, contrastive accuracy "
        f"{final.get('accuracy', float('nan')):.3f} (chance {chance:.3f}), code perplexity "
        f"{final.get('code_perplexity', float('nan')):.1f} of {args.codes} codes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
