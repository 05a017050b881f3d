#!/usr/bin/env python
"""GPU checks of the card's training command: clean exit after training, and AMP.

Runs ``fairseq-hydra-train`` (the card's command, ``meg2vec_tiny`` unless ``--config``) a few
times on synthetic data and reports, for each run, the return code, the last logged loss and
the seconds between fairseq's ``done training`` log line and the process's exit. A run that is
still alive ``--grace`` seconds after ``done training`` gets SIGABRT; with
``PYTHONFAULTHANDLER=1`` Python then prints every thread's stack into the log, which shows
where it waits. Cases:

* ``workers8``: ``dataset.num_workers=8`` (the lingering seen on GPUs);
* ``workers8-nopersist``: the same with ``task.persistent_workers=false``;
* ``amp``: ``common.amp=true`` (fairseq's fp16 autocast);
* ``bf16``: ``common.bf16=true`` (bf16 weights, no autocast), for reference.

Writes ``OUT/gpu_checks.json`` and ``OUT/<case>.log`` and prints a table. Works on CPU too
(``--cases amp`` is meaningless there: fairseq's AMP needs CUDA), which is how it was tried
before spending GPU time.

Example::

    python benchmarks/gpu_checks.py --data /tmp/data --out /tmp/gpu_checks --max-update 60
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Dict, List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES: Dict[str, List[str]] = {
    "workers8": ["dataset.num_workers=8"],
    "workers8-nopersist": ["dataset.num_workers=8", "++task.persistent_workers=false"],
    "amp": ["common.amp=true"],
    "bf16": ["common.bf16=true"],
}


def run_case(name: str, overrides: List[str], args: argparse.Namespace) -> Dict[str, object]:
    """Train one case; time the gap between ``done training`` and the process's exit."""
    log_path = os.path.join(args.out, f"{name}.log")
    command = [
        "fairseq-hydra-train", "--config-dir", "config/pretraining", "--config-name",
        args.config, "common.user_dir=meg2vec_fairseq", f"task.data={args.data}",
        f"checkpoint.save_dir={os.path.join(args.out, 'ck-' + name)}",
        f"optimization.max_update={args.max_update}", "common.log_interval=10",
        "dataset.validate_interval=1000", "checkpoint.save_interval=1000", *overrides,
    ]
    env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONUNBUFFERED="1")
    start = time.time()
    done_at = None
    aborted = False
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        while process.poll() is None:
            time.sleep(0.2)
            if done_at is None:
                with open(log_path) as f:
                    if "done training" in f.read():
                        done_at = time.time()
            elif time.time() - done_at > args.grace and not aborted:
                process.send_signal(signal.SIGABRT)  # faulthandler dumps every thread
                aborted = True
            if time.time() - start > args.timeout:
                process.kill()
                break
        rc = process.wait()
    end = time.time()
    with open(log_path) as f:
        text = f.read()
    losses = re.findall(r"\bloss[=\s|]+([-\d.]+|nan|inf)", text)
    return {
        "case": name,
        "overrides": overrides,
        "rc": rc,
        "wall_s": round(end - start, 1),
        "exit_after_done_s": None if done_at is None else round(end - done_at, 1),
        "aborted": aborted,
        "last_loss": losses[-1] if losses else None,
        "log": log_path,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="manifest directory (train.tsv, valid.tsv)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="meg2vec_tiny")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--max-update", type=int, default=60)
    parser.add_argument("--grace", type=float, default=15.0,
                        help="seconds after 'done training' before SIGABRT (default 15)")
    parser.add_argument("--timeout", type=float, default=240.0, help="per case (s)")
    parser.add_argument("--parallel", action="store_true", help="run the cases at once")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.parallel:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(args.cases)) as pool:
            results = list(pool.map(lambda c: run_case(c, CASES[c], args), args.cases))
    else:
        results = [run_case(case, CASES[case], args) for case in args.cases]
    with open(os.path.join(args.out, "gpu_checks.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("| case | rc | last loss | s from 'done training' to exit | SIGABRT sent | wall s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['rc']} | {r['last_loss']} | {r['exit_after_done_s']} | "
              f"{r['aborted']} | {r['wall_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
