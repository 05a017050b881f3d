#!/usr/bin/env python
"""Pool one variant's runs from several ablation outputs into one row per task.

Each ``benchmarks/ablation.py`` output holds a few pre-training runs of a variant (e.g. seeds
1 and 2 on CPU, and seeds 1 and 2 again on a GPU visit, where other numerics make them other
runs). Pooling gives the spread over every pre-training run, as the research log asks, with
the mean of each run listed so that no single run hides in the pool. Only outputs of the same
data (generator setting) should be pooled: the script refuses outputs whose data differ. Where
the same recipe carries another name in an older output (the shipped recipe was
``shipped+sensor_power_path`` before it shipped), ``--variant`` takes one name per source,
separated by commas.

Example::

    python benchmarks/pool_ablations.py --variant shipped \\
        cpu=outputs/abl_r15/ablation.json gpu=outputs/gpu_r17b/gen1/ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Sequence, Tuple, Union

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import probe_synthetic as ps  # noqa: E402


def load_sources(specs: Sequence[str]) -> List[Tuple[str, Dict[str, object]]]:
    """``label=path`` (or ``path``, labelled by position) -> ``[(label, ablation.json)]``."""
    sources = []
    for index, spec in enumerate(specs):
        label, _, path = spec.rpartition("=")
        with open(path) as f:
            sources.append((label or f"source{index + 1}", json.load(f)))
    return sources


def _data_name(combined: Dict[str, object]) -> str:
    return os.path.basename(str(combined.get("data", "")).rstrip("/"))


def pool(sources: Sequence[Tuple[str, Dict[str, object]]],
         variant: Union[str, Sequence[str]], row: str) -> Dict[str, Dict[str, object]]:
    """Per task: the pooled summary of ``row`` (e.g. ``probe checkpoint``) over every source.

    ``variant`` is one name for every source, or one name per source.
    Returns ``{task: {"macro_f1": {mean, std, ...}, "runs": {"label-s<k>": mean F1}}}``.
    Raises ``ValueError`` naming the source when a variant is missing or the data differ.
    """
    names = {_data_name(combined) for _label, combined in sources}
    if len(names) > 1:
        raise ValueError(f"the outputs were made on different data ({', '.join(sorted(names))});"
                         " pool runs of one generator setting only")
    variants = [variant] if isinstance(variant, str) else list(variant)
    if len(variants) == 1:
        variants *= len(sources)
    if len(variants) != len(sources):
        raise ValueError(f"{len(variants)} variant names for {len(sources)} sources: give one "
                         "name, or one per source")
    pooled: Dict[str, Dict[str, object]] = {}
    for (label, combined), variant in zip(sources, variants):
        if variant not in combined["variants"]:
            raise ValueError(f"{label}: no variant {variant!r} (has "
                             f"{', '.join(combined['variants'])})")
        for task, rows in combined["variants"][variant]["tasks"].items():
            if row not in rows:
                continue
            entry = pooled.setdefault(task, {"all": [], "runs": {}})
            for run in rows[row]["runs"]:
                entry["all"].append(run)
                key = f"{label}-s{run.get('pretrain_seed', '?')}"
                entry["runs"].setdefault(key, []).append(run["macro_f1"])
    return {task: {"macro_f1": ps.summarise_row(entry["all"])["macro_f1"],
                   "runs": {k: sum(v) / len(v) for k, v in entry["runs"].items()}}
            for task, entry in pooled.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="LABEL=OUT/ablation.json (or a path)")
    parser.add_argument("--variant", default="shipped",
                        help="the variant to pool, or its name in each source, in order, "
                        "separated by commas")
    parser.add_argument("--row", default="probe checkpoint",
                        help="result row, e.g. 'probe checkpoint', 'fine-tune 10%% checkpoint'")
    args = parser.parse_args(argv)
    try:
        pooled = pool(load_sources(args.sources), args.variant.split(","), args.row)
    except (OSError, ValueError, KeyError) as error:
        parser.error(str(error))
    print(f"| task | {args.row}: macro-F1 mean ± std (runs) | mean per pre-training run |")
    print("|---|---|---|")
    for task, entry in pooled.items():
        f1 = entry["macro_f1"]
        runs = ", ".join(f"{k} {v:.3f}" for k, v in entry["runs"].items())
        print(f"| {task} | {f1['mean']:.3f} ± {f1['std']:.3f} ({f1['n']}) | {runs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
