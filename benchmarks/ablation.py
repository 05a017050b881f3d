#!/usr/bin/env python
"""Pre-training ablation: named variants x pre-training seeds, one combined table.

Each variant is a list of hydra overrides on top of ``--config`` (built-in: ``shipped``, the
shipped tiny config, and ``wav2vec2``, the seed's plain objective). All variants train on the
same generated data (one directory, shared through :func:`probe_synthetic.prepare_data`) for
the same number of updates (``--max-update``; no wall-clock budget, so variants compare
fairly on shared hardware; ``--budget-minutes`` is only a safety cap), as parallel
subprocesses (``--parallel``, each with ``--threads`` OMP/torch threads;
``fairseq-hydra-train`` uses the GPU when CUDA is available, and several processes can share
it). Each checkpoint is then probed and fine-tuned by ``benchmarks/probe_synthetic.py
--evaluate checkpoint`` (also in parallel), and the random-init / raw references once, with the
architecture of the ``shipped`` variant (else the first one). Writes ``OUT/ablation.md``
(variant rows x task columns, mean ± std over pre-training seeds x probe seeds) and
``OUT/ablation.json``.

Variants file (``--variants``): JSON or YAML mapping ``name -> [override, ...]``, e.g.::

    {"shipped": [], "mask_len1": ["model.mask_length=1"]}

``benchmarks/variants_*.json`` are the ablations of docs/pretraining_research.md; each spells out
every objective field, so it does not depend on the yaml's defaults.

Example (GPU machine)::

    python benchmarks/ablation.py --out outputs/ablation \\
        --variants benchmarks/variants_round3.json --pretrain-seeds 1 2 --max-update 1000 \\
        --parallel 16 --threads 1 --set dataset.num_workers=0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
sys.path.insert(0, REPO_ROOT)

import probe_synthetic as ps  # noqa: E402

from meg2vec_fairseq.configs import plain_wav2vec2_overrides  # noqa: E402
from meg2vec_fairseq.probing.report import write_json  # noqa: E402

#: Names of the built-in variants: the shipped recipe against plain wav2vec 2.0 (the seed's
#: objective, :func:`~meg2vec_fairseq.configs.plain_wav2vec2_overrides` of ``--config``);
#: benchmarks/variants_*.json hold the ablations that were run (docs/pretraining_research.md).
BUILTIN_VARIANTS = ("shipped", "wav2vec2")
BASELINE = "shipped"


def load_variants(path: Optional[str], only: Optional[Sequence[str]],
                  config: str = "meg2vec_tiny") -> Dict[str, List[str]]:
    """Variants from a JSON/YAML file (or the built-in ones on ``config``), optionally a named
    subset."""
    if path:
        if not os.path.isfile(path):
            raise SystemExit(f"error: --variants {path}: no such file")
        with open(path) as f:
            text = f.read()
        try:
            variants = json.loads(text)
        except json.JSONDecodeError:
            import yaml

            variants = yaml.safe_load(text)
        if not isinstance(variants, dict) or not all(
            isinstance(v, list) and all(isinstance(o, str) for o in v) for v in variants.values()
        ):
            raise SystemExit(f"error: --variants {path}: expected a mapping name -> list of "
                             "override strings")
    else:
        variants = {"shipped": [], "wav2vec2": plain_wav2vec2_overrides(config)}
    if only:
        unknown = [name for name in only if name not in variants]
        if unknown:
            raise SystemExit(f"error: --only: unknown variant(s) {', '.join(unknown)} "
                             f"(known: {', '.join(variants)})")
        variants = {name: variants[name] for name in only}
    if not variants:
        raise SystemExit("error: --variants: no variants")
    return variants


def run_jobs(jobs: List[Dict[str, object]], parallel: int, threads: int) -> None:
    """Run ``jobs`` (``command``, ``log``, ``name``) ``parallel`` at a time; record rc/wall."""
    env = dict(os.environ)
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)  # many processes, few cores

    def run(job: Dict[str, object]) -> None:
        os.makedirs(os.path.dirname(job["log"]), exist_ok=True)
        start = time.time()
        with open(job["log"], "w") as log:
            log.write(" ".join(job["command"]) + "\n")
            log.flush()
            job["rc"] = subprocess.call(job["command"], cwd=REPO_ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
        job["wall_s"] = time.time() - start
        status = "ok" if job["rc"] == 0 else f"FAILED (rc {job['rc']}, see {job['log']})"
        print(f"  {job['name']}: {status} in {job['wall_s']:.0f} s", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        list(pool.map(run, jobs))


def data_args(args) -> List[str]:
    """The probe_synthetic options that define the data and the evaluation."""
    out = ["--data-dir", args.data_dir, "--pretrain-recordings", str(args.pretrain_recordings),
           "--probe-recordings", str(args.probe_recordings), "--seconds", str(args.seconds),
           "--event-snr", str(args.event_snr), "--rhythm-bandwidth", str(args.rhythm_bandwidth),
           "--generator-seed", str(args.generator_seed),
           "--n-sensors", str(args.n_sensors), "--sfreq", str(args.sfreq),
           "--state-alpha-suppression", str(args.state_alpha_suppression),
           "--state-response", str(args.state_response), "--tasks", *args.tasks,
           "--layers", *args.layers, "--seeds", *map(str, args.seeds),
           "--finetune-fractions", *map(str, args.finetune_fractions),
           "--finetune-epochs", str(args.finetune_epochs),
           "--finetune-probe-init" if args.finetune_probe_init else "--no-finetune-probe-init",
           *(["--event-kinds", ps.format_event_kinds(args.event_kinds)]
             if args.event_kinds else []),
           "--finetune-pooling", args.finetune_pooling,
           "--finetune-lr-encoder", str(args.finetune_lr_encoder),
           "--device", args.device,
           "--threads", str(args.threads), "--config", args.config]
    return out


def combine(args, variants: Dict[str, List[str]], runs: Dict[str, Dict[int, str]],
            baselines: str) -> Dict[str, object]:
    """Merge the per-checkpoint results into one JSON-able summary."""
    combined: Dict[str, object] = {"variants": {}, "references": {}, "chance": {},
                                   "settings": {k: v for k, v in vars(args).items()}}
    for name in variants:
        merged: Dict[str, Dict[str, List[Dict[str, object]]]] = {}
        training = {}
        for run_dir in runs[name].values():
            path = os.path.join(run_dir, "result.json")
            if not os.path.isfile(path):
                continue
            with open(path) as f:
                result = json.load(f)
            training.update(result["pretraining"])
            for task, entry in result["tasks"].items():
                combined["chance"][task] = entry["chance"]
                for row, data in entry["rows"].items():
                    merged.setdefault(task, {}).setdefault(row, []).extend(data["runs"])
        combined["variants"][name] = {
            "overrides": variants[name],
            "pretraining": training,
            "tasks": {task: {row: ps.summarise_row(r) for row, r in rows.items()}
                      for task, rows in merged.items()},
        }
    path = os.path.join(baselines, "result.json")
    if os.path.isfile(path):
        with open(path) as f:
            result = json.load(f)
        for task, entry in result["tasks"].items():
            combined["chance"][task] = entry["chance"]
            combined["references"][task] = entry["rows"]
    return combined


def columns(args) -> List[tuple]:
    """``(header, task, checkpoint row, reference row)`` per table column."""
    cols = []
    for task in args.tasks:
        cols.append((f"{task} probe", task, "probe checkpoint", "probe random-init"))
    for fraction in args.finetune_fractions:
        for task in args.tasks:
            name = ps.fraction_name(fraction)
            cols.append((f"{task} FT{name}", task, f"fine-tune {name} checkpoint",
                         f"fine-tune {name} random-init"))
    return cols


def markdown(combined: Dict[str, object], args) -> str:
    """Variant rows x task columns (test macro-F1 mean ± std), references, training summary."""
    cols = columns(args)
    lines = ["| variant | " + " | ".join(c[0] for c in cols) + " | updates | valid acc. | "
             "code ppl |", "|---" * (len(cols) + 4) + "|"]

    def cell(row: Optional[Dict[str, object]]) -> str:
        if not row:
            return "-"
        f1 = row["macro_f1"]
        return f"{f1['mean']:.3f} ± {f1['std']:.3f}"

    for name, entry in combined["variants"].items():
        cells = [cell(entry["tasks"].get(task, {}).get(row)) for _h, task, row, _r in cols]
        training = list(entry["pretraining"].values())
        updates = [t["updates"] for t in training if t.get("updates") is not None]
        acc = [t["final_valid"].get("accuracy") for t in training
               if t["final_valid"].get("accuracy") is not None]
        ppl = [t["final_valid"].get("code_perplexity") for t in training
               if t["final_valid"].get("code_perplexity") is not None]
        lines.append(f"| {name} | " + " | ".join(cells) + " | "
                     f"{_mean(updates, 0)} | {_mean(acc, 3)} | {_mean(ppl, 1)} |")
    refs = combined["references"]
    lines.append("| random-init | " + " | ".join(
        cell(refs.get(task, {}).get(ref)) for _h, task, _row, ref in cols) + " | | | |")
    lines.append("| raw | " + " | ".join(
        cell(refs.get(task, {}).get("probe raw")) if header.endswith("probe") else "-"
        for header, task, _row, _ref in cols) + " | | | |")
    lines.append("| chance | " + " | ".join(
        f"{combined['chance'][task]['macro_f1']:.3f}" if task in combined["chance"] else "-"
        for _h, task, _row, _ref in cols) + " | | | |")
    n = len(args.pretrain_seeds)
    lines.append(f"\ntest macro-F1, mean ± std over {n} pre-training seed(s) x "
                 f"{len(args.seeds)} probe seed(s) (random-init / raw: probe seeds); "
                 f"{args.max_update} updates per run; valid acc. / code ppl: last validation "
                 "(mean over pre-training seeds).")
    return "\n".join(lines) + "\n"


def _mean(values: Sequence[float], digits: int) -> str:
    return f"{sum(values) / len(values):.{digits}f}" if values else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/ablation")
    parser.add_argument("--variants", default=None,
                        help="JSON/YAML file name -> list of hydra overrides (default: built-in "
                        f"{', '.join(BUILTIN_VARIANTS)})")
    parser.add_argument("--only", nargs="+", default=None, help="run only these variants")
    parser.add_argument("--config", default="meg2vec_tiny")
    parser.add_argument("--pretrain-seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-update", type=int, default=600,
                        help="updates per pre-training run (fixed budget; default 600)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="wall-clock cap per pre-training run (fairseq's stop_time_hours), "
                        "a safety net on a time-limited machine; runs that hit it stop early "
                        "and their update count is in the table (default: none)")
    parser.add_argument("--set", dest="common_overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="hydra override added to every variant (repeatable), e.g. "
                        "--set dataset.num_workers=0")
    parser.add_argument("--parallel", type=int, default=4, help="processes at once")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads per process")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--data-dir", default=None, help="default OUT/data")
    parser.add_argument("--pretrain-recordings", type=int, default=ps.PRETRAIN_RECORDINGS,
                        help=f"unlabelled pre-training recordings (default "
                        f"{ps.PRETRAIN_RECORDINGS}; 24 before round 24)")
    parser.add_argument("--probe-recordings", type=int, default=45,
                        help="held-out recordings for the probes, split 60/20/20 (default 45; "
                        "with 15 the state scores were recording-specific, "
                        "docs/pretraining_research.md)")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--event-snr", type=float, default=ps.SyntheticMEGConfig.event_snr)
    parser.add_argument("--event-kinds", type=ps.parse_event_kinds, default=None,
                        help="as benchmarks/probe_synthetic.py's --event-kinds")
    parser.add_argument("--rhythm-bandwidth", type=float, default=2.0)
    parser.add_argument("--n-sensors", type=int, default=ps.N_SENSORS,
                        help="as benchmarks/probe_synthetic.py's --n-sensors")
    parser.add_argument("--sfreq", type=int, default=int(ps.SFREQ),
                        help="as benchmarks/probe_synthetic.py's --sfreq")
    parser.add_argument("--generator-seed", type=int,
                        default=ps.SyntheticMEGConfig.layout_seed)
    parser.add_argument("--state-alpha-suppression", type=float,
                        default=ps.SyntheticMEGConfig.state_alpha_suppression)
    parser.add_argument("--state-response", type=float,
                        default=ps.SyntheticMEGConfig.state_response)
    parser.add_argument("--tasks", nargs="+", choices=ps.TASKS, default=list(ps.TASKS))
    parser.add_argument("--layers", nargs="+", default=["cnn+last", "last"],
                        help="read-outs to probe (probe_synthetic.py --layers); the first is "
                        "the headline row and the fine-tuned read-out (default: both depths "
                        "side by side, the shipped read-out since round 43)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="probe / fine-tune seeds (default 0 1 2)")
    parser.add_argument("--finetune-fractions", type=float, nargs="*", default=[0.1, 1.0])
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--finetune-probe-init", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="fine-tune from the linear probe of the initial encoder (LP-FT, "
                        "default) or from a fresh head (--no-)")
    parser.add_argument("--finetune-pooling", choices=("mean", "meanstd"), default="meanstd")
    parser.add_argument("--finetune-lr-encoder", type=float, default=ps.FinetuneOptions.lr_encoder,
                        help="the encoder's learning rate while fine-tuning "
                        "(probe_synthetic.py --finetune-lr-encoder)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--pretrain-only", action="store_true",
                        help="pre-train and stop (no probes, no table): e.g. on a GPU visit, "
                        "evaluated later with --reuse-checkpoints")
    parser.add_argument("--reuse-checkpoints", action="store_true",
                        help="skip the pre-training of runs that finished: OUT/runs/<variant>-"
                        "s<k>/seed-<k>/checkpoints/checkpoint_last.pt exists and the "
                        "pretrain.log beside checkpoints/ has fairseq's 'done training' line "
                        "(the evaluation reads that log, so bring it back too); an unfinished "
                        "run is trained again from scratch. Without it every run starts fresh")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.max_update < 1:
        parser.error(f"--max-update must be >= 1, got {args.max_update}")
    if not args.finetune_lr_encoder > 0:
        parser.error(f"--finetune-lr-encoder must be positive, got {args.finetune_lr_encoder}")
    problem = ps.data_problem(args)
    if problem:
        parser.error(problem)
    variants = load_variants(args.variants, args.only, args.config)
    out = os.path.abspath(args.out)
    args.data_dir = os.path.abspath(args.data_dir or os.path.join(out, "data"))
    device = "cpu" if args.device == "cpu" else "auto"

    data = None
    if not args.dry_run:
        print("data ...", flush=True)
        data = ps.prepare_data(args_for_data(args))
        print(f"data: {data['dir']}", flush=True)
    pretrain_dir = data["pretrain"] if data else os.path.join(args.data_dir, "<hash>/pretrain")

    pretrain_jobs, eval_jobs = [], []
    runs: Dict[str, Dict[int, str]] = {}
    script = os.path.join(REPO_ROOT, "benchmarks", "probe_synthetic.py")
    for name, overrides in variants.items():
        for seed in args.pretrain_seeds:
            run_dir = os.path.join(out, "runs", f"{name}-s{seed}")
            seed_dir = os.path.join(run_dir, f"seed-{seed}")
            runs.setdefault(name, {})[seed] = run_dir
            command = ps.pretrain_command(pretrain_dir, os.path.join(seed_dir, "checkpoints"),
                                          args.config, args.budget_minutes or 1e6,
                                          args.max_update, seed,
                                          [*ps.data_overrides(args), *args.common_overrides,
                                           *overrides], device)
            pretrain_jobs.append({"name": f"pretrain {name} seed {seed}", "command": command,
                                  "log": os.path.join(seed_dir, "pretrain.log")})
            eval_jobs.append({
                "name": f"evaluate {name} seed {seed}",
                "command": [sys.executable, script, "--out", run_dir, "--pretrain-seeds",
                            str(seed), "--reuse-checkpoint", "--evaluate", "checkpoint",
                            *data_args(args)],
                "log": os.path.join(run_dir, "evaluate.log")})
    baseline_name = BASELINE if BASELINE in variants else next(iter(variants))
    first_seed = args.pretrain_seeds[0]
    architecture = os.path.join(runs[baseline_name][first_seed], f"seed-{first_seed}",
                                "checkpoints", "checkpoint_last.pt")
    baselines = os.path.join(out, "baselines")
    eval_jobs.append({
        "name": "evaluate random-init and raw",
        "command": [sys.executable, script, "--out", baselines, "--evaluate", "baselines",
                    "--random-init-from", architecture, *data_args(args)],
        "log": os.path.join(baselines, "evaluate.log")})

    if args.dry_run:
        for job in pretrain_jobs + eval_jobs:
            print(f"# {job['name']}\n{' '.join(job['command'])}")
        return 0
    start = time.time()
    if args.reuse_checkpoints:
        for job in pretrain_jobs:
            if finished_training(job):
                job.update(rc=0, wall_s=0.0, reused=True)
    todo = [job for job in pretrain_jobs if not job.get("reused")]
    for job in todo:
        # fairseq would resume from a checkpoint_last.pt left in save_dir (an unfinished run,
        # or a finished one without --reuse-checkpoints): every run trained here starts fresh
        stale = os.path.join(os.path.dirname(str(job["log"])), "checkpoints")
        if os.path.isdir(stale):
            print(f"  {job['name']}: removing the checkpoints of an earlier run ({stale})",
                  flush=True)
            shutil.rmtree(stale)
    print(f"pre-training {len(todo)} run(s), {args.parallel} at a time ...", flush=True)
    run_jobs(todo, args.parallel, args.threads)
    if args.pretrain_only:
        return 0 if all(finished_training(job) for job in pretrain_jobs) else 1
    failed = {job["name"] for job in pretrain_jobs if not finished_training(job)}
    eval_jobs = [job for job in eval_jobs
                 if job["name"].replace("evaluate", "pretrain", 1) not in failed]
    print(f"evaluating {len(eval_jobs)} job(s) ...", flush=True)
    run_jobs(eval_jobs, args.parallel, args.threads)
    combined = combine(args, variants, runs, baselines)
    combined["jobs"] = [{k: job.get(k) for k in ("name", "rc", "wall_s", "log")}
                        for job in pretrain_jobs + eval_jobs]
    combined["wall_s"] = time.time() - start
    combined["data"] = data["dir"]
    write_json(combined, os.path.join(out, "ablation.json"))
    table = markdown(combined, args)
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"wrote {out}/ablation.md, ablation.json ({combined['wall_s']:.0f} s)")
    failed_eval = any(job.get("rc") for job in eval_jobs)
    return 1 if failed or failed_eval else 0


def finished_training(job: Dict[str, object]) -> bool:
    """Whether a pre-training job left its final checkpoint, whatever its exit status (before
    a job runs: whether an earlier run of it finished, for ``--reuse-checkpoints``).

    On the H200 three of four ``meg2vec_small`` runs aborted at interpreter exit ("terminate
    called without an active exception", rc -6) after fairseq's ``done training`` line and
    the last checkpoint (docs/gpu.md); such a run is evaluated, and its rc stays in the JSON.
    """
    if job.get("rc") == 0:
        return True
    log = str(job["log"])
    checkpoint = os.path.join(os.path.dirname(log), "checkpoints", "checkpoint_last.pt")
    if not os.path.isfile(checkpoint) or not os.path.isfile(log):
        return False
    with open(log, errors="replace") as f:
        return "done training in" in f.read()


def args_for_data(args) -> argparse.Namespace:
    """The fields :func:`probe_synthetic.prepare_data` reads, with its own defaults."""
    defaults = {"window": 0.5, "state_window": 1.0, "context": 1.0}
    return argparse.Namespace(**{**defaults, **vars(args)})


if __name__ == "__main__":
    sys.exit(main())
