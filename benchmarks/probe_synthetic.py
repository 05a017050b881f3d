#!/usr/bin/env python
"""Does pre-training learn? Pre-train meg2vec tiny on synthetic MEG, probe event type.

1. Unlabelled pre-training data: synthetic recordings (1/f background, alpha/beta rhythms,
   four kinds of transient event with distinct topographies and time courses at random
   onsets; :mod:`meg2vec_fairseq.synthetic`), written as 5-s segments with train/valid
   manifests.
2. Pre-training: ``fairseq-hydra-train`` with the shipped config (``--config``, default
   ``meg2vec_tiny``) for a fixed wall-clock budget (fairseq's ``optimization.stop_time_hours``)
   or ``--max-update``, whichever comes first; JSON logs are parsed for the curves.
3. Probe data: *held-out* recordings (other seeds, same sensor layout and event patterns); one
   labelled window per event (``--window`` s from the onset; label = event kind), split by
   recording into train / valid / test, written as a manifest + labels TSV (the generic probe
   format).
4. Probe (:mod:`meg2vec_fairseq.probe`, the same code as ``tools/probe.py``): the trained
   checkpoint, the same architecture with fresh weights (one draw per seed) and the raw sensors,
   through the same windows, pooling and classifier, for several seeds.

Writes ``OUT/result.json`` (probe result + training summary), ``OUT/table.md``,
``OUT/training.png`` (loss, contrastive accuracy and perplexities over updates) and
``OUT/probe.png``; prints the table.

Example (the README's numbers)::

    python benchmarks/probe_synthetic.py --out outputs/probe_synthetic --budget-minutes 15
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from typing import Dict, List, Sequence

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from meg2vec_fairseq import probe as pr  # noqa: E402
from meg2vec_fairseq.synthetic import SyntheticMEGConfig, write_synthetic_dataset  # noqa: E402

TRAIN_KEYS = ("loss", "accuracy", "prob_perplexity", "code_perplexity", "temp", "lr",
              "loss_0", "loss_1", "loss_2")


def parse_json_log(text: str) -> Dict[str, List[Dict[str, float]]]:
    """fairseq ``common.log_format=json`` lines -> {"train_inner": [...], "valid": [...]}."""
    records: Dict[str, List[Dict[str, float]]] = {"train_inner": [], "valid": [], "train": []}
    for line in text.splitlines():
        for prefix in records:
            tag = f"[{prefix}][INFO] - "
            if tag in line:
                try:
                    raw = json.loads(line.split(tag, 1)[1])
                except json.JSONDecodeError:
                    continue
                record = {}
                for key, value in raw.items():
                    key = key[len(prefix) + 1:] if key.startswith(prefix + "_") else key
                    try:
                        record[key] = float(value)
                    except (TypeError, ValueError):
                        pass
                records[prefix].append(record)
    return records


def write_probe_data(dest: str, n_recordings: int, seconds: float, window: float,
                     config: SyntheticMEGConfig, seed: int) -> Dict[str, int]:
    """Held-out recordings + labels TSV (60 / 20 / 20 % of recordings: train / valid / test)."""
    write_synthetic_dataset(dest, n_recordings=n_recordings, seconds_per_recording=seconds,
                            n_valid_recordings=0, seed=seed, config=config)
    n_train = int(round(0.6 * n_recordings))
    n_valid = max(1, int(round(0.2 * n_recordings)))
    segment_seconds = 5.0
    counts = {"train": 0, "valid": 0, "test": 0}
    with open(os.path.join(dest, "events.tsv")) as f:
        events = list(csv.DictReader(f, delimiter="\t"))
    with open(os.path.join(dest, "labels.tsv"), "w") as f:
        f.write("segment\tstart\tend\tlabel\tsplit\n")
        for event in events:
            recording = int(event["segment"].split("/")[1][len("rec-"):])
            onset = int(event["onset_sample"]) / config.sfreq
            if onset + window > segment_seconds:
                continue
            split = ("train" if recording < n_train
                     else "valid" if recording < n_train + n_valid else "test")
            counts[split] += 1
            f.write(f"{event['segment']}\t{onset:.4f}\t{onset + window:.4f}\t"
                    f"kind{event['kind']}\t{split}\n")
    return counts


def pretrain(data: str, save_dir: str, config: str, budget_minutes: float, max_update: int,
             overrides: Sequence[str], log_path: str) -> Dict[str, object]:
    """Run fairseq-hydra-train; returns wall time, return code and the parsed log."""
    env = dict(os.environ)
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    command = [
        "fairseq-hydra-train", "--config-dir", "config/pretraining", "--config-name", config,
        "common.user_dir=meg2vec_fairseq", f"task.data={data}",
        f"checkpoint.save_dir={save_dir}", f"optimization.max_update={max_update}",
        f"optimization.stop_time_hours={budget_minutes / 60.0:.6f}",
        "common.log_format=json", "common.log_interval=10", *overrides,
    ]
    start = time.time()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        rc = subprocess.call(command, cwd=REPO_ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    wall = time.time() - start
    with open(log_path) as f:
        text = f.read()
    if rc != 0:
        raise SystemExit(f"pre-training failed (rc {rc}); see {log_path}")
    return {"command": command, "wall_s": wall, "log": parse_json_log(text)}


def plot_training(log: Dict[str, List[Dict[str, float]]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in log["train_inner"] if "num_updates" in r]
    valid = [r for r in log["valid"] if "num_updates" in r]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    series = (("loss", "loss"), ("accuracy", "contrastive accuracy"))
    for ax, (key, label) in zip(axes[:2], series):
        ax.plot([r["num_updates"] for r in train], [r.get(key, np.nan) for r in train],
                label="train")
        ax.plot([r["num_updates"] for r in valid], [r.get(key, np.nan) for r in valid], "o-",
                label="valid")
        ax.set_xlabel("update")
        ax.set_title(label)
        ax.legend()
    ax = axes[2]
    for key, style in (("prob_perplexity", "-"), ("code_perplexity", "--")):
        ax.plot([r["num_updates"] for r in train], [r.get(key, np.nan) for r in train], style,
                label=f"train {key}")
    ax.axhline(50, color="grey", lw=0.8, ls=":", label="50")
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_title("codebook perplexity")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(result: Dict[str, object]) -> str:
    seeds = len(result["probe"]["seeds"])
    lines = [f"| features | macro-F1 (mean ± std, {seeds} seeds) | balanced accuracy |",
             "|---|---|---|"]
    for row in result["sources"]:
        f1, ba = row["macro_f1"], row["balanced_accuracy"]
        lines.append(f"| {row['name']} | {f1['mean']:.3f} ± {f1['std']:.3f} | "
                     f"{ba['mean']:.3f} ± {ba['std']:.3f} |")
    chance = result["chance"]
    lines.append(f"| chance | {chance['macro_f1']:.3f} | {chance['balanced_accuracy']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/probe_synthetic")
    parser.add_argument("--config", default="meg2vec_tiny", help="config/pretraining/<name>.yaml")
    parser.add_argument("--budget-minutes", type=float, default=15.0,
                        help="wall-clock pre-training budget (default 15)")
    parser.add_argument("--max-update", type=int, default=6000,
                        help="update cap, also the length of the lr decay (default 6000; "
                        "on shared cores the time budget usually ends training first)")
    parser.add_argument("--pretrain-recordings", type=int, default=24)
    parser.add_argument("--probe-recordings", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=40.0, help="per recording")
    parser.add_argument("--event-snr", type=float, default=SyntheticMEGConfig.event_snr)
    parser.add_argument("--rhythm-bandwidth", type=float, default=2.0,
                        help="line width (Hz) of the synthetic alpha/beta rhythms (default 2; "
                        "0: the generator's pure sinusoids, whose phase alone identifies a "
                        "frame)")
    parser.add_argument("--window", type=float, default=0.5,
                        help="probe window from the event onset (s)")
    parser.add_argument("--context", type=float, default=1.0,
                        help="signal each side of the window the models see (s)")
    parser.add_argument("--layers", nargs="+", default=["last", "cnn"],
                        help="Transformer layers to probe for the checkpoint and random-init "
                        "(first one is the headline row)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--reuse-checkpoint", action="store_true",
                        help="probe OUT/checkpoints/checkpoint_last.pt without re-training")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="extra hydra override for pre-training (repeatable), e.g. "
                        "--set model.mask_prob=0.65")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.WARNING)  # importing fairseq leaves the root at DEBUG
    warnings.filterwarnings("ignore", category=FutureWarning)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    config = SyntheticMEGConfig(event_snr=args.event_snr, rhythm_bandwidth=args.rhythm_bandwidth)
    pretrain_data = os.path.join(out, "pretrain_data")
    probe_data = os.path.join(out, "probe_data")
    save_dir = os.path.join(out, "checkpoints")
    if not os.path.isfile(os.path.join(pretrain_data, "train.tsv")):
        write_synthetic_dataset(pretrain_data, n_recordings=args.pretrain_recordings,
                                seconds_per_recording=args.seconds, n_valid_recordings=2,
                                seed=0, config=config)
    counts = write_probe_data(probe_data, args.probe_recordings, args.seconds, args.window,
                              config, seed=100000)
    print(f"probe windows per split: {counts}", flush=True)

    log_path = os.path.join(out, "pretrain.log")
    if args.reuse_checkpoint:
        with open(log_path) as f:
            training = {"command": f.readline().split(), "wall_s": None,
                        "log": parse_json_log(f.read())}
    else:
        if os.path.isdir(save_dir):
            shutil.rmtree(save_dir)
        print(f"pre-training {args.config} for at most {args.budget_minutes} min ...", flush=True)
        training = pretrain(pretrain_data, save_dir, args.config, args.budget_minutes,
                            args.max_update, args.overrides, log_path)
    checkpoint = os.path.join(save_dir, "checkpoint_last.pt")
    train_log = training["log"]["train_inner"]
    last = train_log[-1] if train_log else {}
    last_valid = training["log"]["valid"][-1] if training["log"]["valid"] else {}
    summary = {
        "updates": last.get("num_updates"),
        "wall_s": training["wall_s"],
        "final_train": {k: last.get(k) for k in TRAIN_KEYS},
        "final_valid": {k: last_valid.get(k) for k in TRAIN_KEYS},
        "max_prob_perplexity": max((r.get("prob_perplexity", 0) for r in train_log), default=None),
    }
    print(f"pre-training: {summary['updates']} updates; final train prob_perplexity "
          f"{last.get('prob_perplexity')}, code_perplexity {last.get('code_perplexity')}, "
          f"accuracy {last.get('accuracy')}", flush=True)
    plot_training(training["log"], os.path.join(out, "training.png"),
                  f"{args.config} on synthetic MEG ({' '.join(args.overrides) or 'shipped'})")

    dataset = pr.load_manifest_labels(os.path.join(probe_data, "train.tsv"),
                                      os.path.join(probe_data, "labels.tsv"),
                                      sample_rate=config.sfreq, context=args.context)
    from meg2vec_fairseq.features import parse_layer

    sources = []
    trained = pr.checkpoint_source(checkpoint)
    for text in args.layers:
        layer = parse_layer(text)
        suffix = "" if text == args.layers[0] else f" (layer {text})"
        trained_at = pr.ModelSource(trained.model, layer, trained.normalize,
                                    name="checkpoint" + suffix, origin=checkpoint)

        def random_source(seed, layer=layer, suffix=suffix):
            model, normalize = pr.build_random_model(checkpoint, seed)
            return pr.ModelSource(model, layer, normalize, name="random-init" + suffix,
                                  kind="random-init", origin=checkpoint)

        sources.append(pr.SourceSpec("checkpoint" + suffix, lambda seed, s=trained_at: s))
        sources.append(pr.SourceSpec("random-init" + suffix, random_source, seeded=True))
    sources.append(pr.SourceSpec("raw", lambda seed: pr.RawSource()))
    result = pr.run_probe(dataset, sources, args.seeds,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    result["pretraining"] = {**summary, "command": training["command"],
                             "config": args.config, "overrides": args.overrides}
    result["benchmark"] = {k: v for k, v in vars(args).items()}
    pr.write_json(result, os.path.join(out, "result.json"))
    pr.plot_result(result, os.path.join(out, "probe.png"))
    table = markdown_table(result)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(pr.format_table(result))
    print(f"\nfinal train prob_perplexity {last.get('prob_perplexity')}, code_perplexity "
          f"{last.get('code_perplexity')} (valid: {last_valid.get('prob_perplexity')}, "
          f"{last_valid.get('code_perplexity')}); {summary['updates']} updates")
    print(f"wrote {out}/result.json, table.md, training.png, probe.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
