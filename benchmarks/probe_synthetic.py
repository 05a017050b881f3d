#!/usr/bin/env python
"""Does pre-training help what users need? Pre-train meg2vec on synthetic MEG; probe and
fine-tune two tasks on held-out recordings.

1. Data (:mod:`meg2vec_fairseq.synthetic`, with sustained on/off states): unlabelled
   pre-training recordings (5-s segments, train/valid manifests) and *held-out* probe
   recordings (other seeds, same sensor layout and topographies; 10-s segments) split by
   recording 60/20/20 % into train / valid / test. Written once per generator setting into
   ``--data-dir`` (a directory named by a hash of those settings; generated in a temporary
   directory and moved in place, so concurrent runs share it safely).
2. Tasks (labels TSVs in the probe data, the generic probe format): ``event`` (kind of event, 4
   classes; a ``--window``-s span from each onset) and ``state`` (listening state on/off;
   ``--state-window``-s spans inside state blocks, balanced per split). Every span has the full
   ``--context`` on both sides inside its segment, so all windows of a task have one length.
3. Pre-training: ``fairseq-hydra-train`` with ``--config`` once per ``--pretrain-seeds`` seed
   (``common.seed``; separate checkpoint directories), for ``--max-update`` updates or the
   ``--budget-minutes`` wall-clock budget, whichever comes first; ``--set`` adds overrides.
4. Evaluation on each task's test split: linear probes (:mod:`meg2vec_fairseq.probing`) of the
   checkpoint (``--layers``), the same architecture with fresh weights, and the raw sensors;
   fine-tuning (:mod:`meg2vec_fairseq.probing.finetune`) from the checkpoint and from fresh
   weights with ``--finetune-fractions`` of the training windows; ``--seeds`` probe/fine-tune
   seeds each.
   Spreads of checkpoint rows are over pre-training seeds x probe seeds.

Writes ``OUT/result.json`` (everything, per pre-training seed and aggregated), ``OUT/table.md``,
``OUT/seed-<k>/training.png`` (loss, contrastive accuracy, perplexities) and
``OUT/probe_<task>.png``; prints the tables.

Example::

    python benchmarks/probe_synthetic.py --out outputs/probe_synthetic --budget-minutes 15 \\
        --pretrain-seeds 1 2 --tasks event state --finetune-fractions 0.1 1.0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from meg2vec_fairseq.constants import N_SENSORS, SFREQ  # noqa: E402
from meg2vec_fairseq.fairseq_logs import parse_fairseq_log  # noqa: E402
from meg2vec_fairseq.features import parse_layer  # noqa: E402
from meg2vec_fairseq.probing.finetune import FinetuneOptions, finetune, read_windows  # noqa: E402
from meg2vec_fairseq.probing.metrics import chance_levels, summarise  # noqa: E402
from meg2vec_fairseq.probing.report import plot_result, write_json  # noqa: E402
from meg2vec_fairseq.probing.run import run_probe  # noqa: E402
from meg2vec_fairseq.probing.sources import (  # noqa: E402
    ModelSource,
    RawSource,
    SourceSpec,
    build_random_model,
    checkpoint_source,
    random_init_spec,
)
from meg2vec_fairseq.probing.windows import SPLITS, load_manifest_labels  # noqa: E402
from meg2vec_fairseq.synthetic import (  # noqa: E402
    EVENT_KINDS,
    RHYTHM_FREQUENCIES,
    SyntheticMEGConfig,
    write_synthetic_dataset,
)

TRAIN_KEYS = ("loss", "accuracy", "prob_perplexity", "code_perplexity", "temp", "lr")
TASKS = ("event", "state")
PROBE_SEGMENT_SECONDS = 10.0  # probe segments: long enough for full context around spans
#: Unlabelled recordings (of --seconds each) to pre-train on: 96 x 40 s = 64 minutes. With 24
#: (16 minutes, rounds 1-23) the encoder memorised them and lost state and events with length
#: (docs/pretraining_research.md, round 24); users bring hours.
PRETRAIN_RECORDINGS = 96


def parse_event_kinds(text: str) -> Tuple[Tuple[float, float], ...]:
    """``"0.3:0,0.2:0,0.4:12"`` -> ``((0.3, 0.0), (0.2, 0.0), (0.4, 12.0))`` (argparse type).

    Each kind is ``DURATION:CARRIER``: its length in seconds (at most 1 s, so that an event
    stays a transient beside the seconds-long state blocks) and its carrier in Hz, 0 for an
    evoked-like deflection (monophasic at even positions of the list, biphasic at odd ones),
    else positive (below the Nyquist frequency of ``--sfreq``: :func:`data_problem`).
    At least two kinds (the event task classifies them)."""
    kinds = []
    for part in text.split(","):
        try:
            duration, carrier = (float(value) for value in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"event kind {part!r} of {text!r} is not DURATION:CARRIER") from None
        if not 0 < duration <= 1.0:
            raise argparse.ArgumentTypeError(
                f"event kind {part!r}: duration must be in (0, 1] s")
        if not carrier >= 0:
            raise argparse.ArgumentTypeError(
                f"event kind {part!r}: carrier must be 0 (evoked-like) or a frequency in Hz")
        kinds.append((duration, carrier))
    if len(kinds) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: at least two event kinds are needed")
    return tuple(kinds)


def format_event_kinds(kinds: Sequence[Tuple[float, float]]) -> str:
    """The inverse of :func:`parse_event_kinds`."""
    return ",".join(f"{duration:g}:{carrier:g}" for duration, carrier in kinds)


def data_problem(args) -> Optional[str]:
    """Why the data options of ``args`` cannot make data (None: they can).

    ``--pretrain-recordings`` must leave at least one training recording beside the 2
    validation ones, ``--probe-recordings`` at least one per split (60/20/20); ``--n-sensors``
    must be at least 2 (a topography needs more than one sensor) and ``--sfreq`` must put the
    Nyquist frequency above every frequency the generator draws: its beta rhythm (20 Hz) and
    the event kinds' carriers."""
    if args.pretrain_recordings < 3:
        return (f"--pretrain-recordings must be at least 3 (2 are validation recordings), "
                f"got {args.pretrain_recordings}")
    if args.probe_recordings < 5:
        return (f"--probe-recordings must be at least 5 (train, valid and test recordings), "
                f"got {args.probe_recordings}")
    config = generator_config(args)
    if config.n_channels < 2:
        return f"--n-sensors must be at least 2, got {config.n_channels}"
    highest = max([*RHYTHM_FREQUENCIES, *(carrier for _, carrier in config.event_kinds)])
    sfreq = config.sfreq
    if not sfreq > 2 * highest:
        return (f"--sfreq {sfreq:g}: its Nyquist frequency ({sfreq / 2:g} Hz) must be above "
                f"the generator's highest frequency, {highest:g} Hz (the beta rhythm or an "
                "--event-kinds carrier)")
    return None


def task_dataset(data: Dict[str, object], task: str, context: float):
    """The labelled windows of ``task`` in the probe data of :func:`prepare_data`, at the
    sampling rate the data were generated at (its key), with ``context`` s each side."""
    return load_manifest_labels(
        os.path.join(data["probe"], "train.tsv"),
        os.path.join(data["probe"], f"labels_{task}.tsv"),
        sample_rate=data["key"]["generator"]["sfreq"], context=context)


def data_overrides(args) -> List[str]:
    """The pre-training overrides that tell the task the data's sensor count and rate."""
    config = generator_config(args)
    return [f"task.in_channels={config.n_channels}", f"task.sample_rate={config.sfreq:g}"]


def generator_config(args) -> SyntheticMEGConfig:
    """The generator settings of a run (states on: the ``state`` task needs them)."""
    kinds = tuple(getattr(args, "event_kinds", None) or EVENT_KINDS)
    return SyntheticMEGConfig(n_channels=getattr(args, "n_sensors", N_SENSORS),
                              sfreq=float(getattr(args, "sfreq", SFREQ)),
                              event_snr=args.event_snr, rhythm_bandwidth=args.rhythm_bandwidth,
                              layout_seed=args.generator_seed, states=True,
                              state_alpha_suppression=args.state_alpha_suppression,
                              state_response=args.state_response,
                              event_kinds=kinds, n_event_kinds=len(kinds))


def data_key(args) -> Dict[str, object]:
    """Everything the generated data and labels depend on (same key -> same directory)."""
    return {"generator": dataclasses.asdict(generator_config(args)),
            "pretrain_recordings": args.pretrain_recordings,
            "probe_recordings": args.probe_recordings, "seconds": args.seconds,
            "window": args.window, "state_window": args.state_window, "context": args.context,
            "version": 2}


def _split_of(recording: int, n_recordings: int) -> str:
    n_train = int(round(0.6 * n_recordings))
    n_valid = max(1, int(round(0.2 * n_recordings)))
    return ("train" if recording < n_train
            else "valid" if recording < n_train + n_valid else "test")


def _recording(segment: str) -> int:
    return int(segment.split("/")[1][len("rec-"):])


def write_labels(dest: str, n_recordings: int, window: float, state_window: float,
                 context: float, sfreq: float, seed: int) -> Dict[str, Dict[str, int]]:
    """``labels_event.tsv`` and ``labels_state.tsv`` of the probe recordings in ``dest``.

    Spans keep ``context`` s on both sides inside the segment (one window length per task).
    State spans tile each block at ``state_window`` steps, 0.25 s away from its edges (the
    ramps), and are balanced per split by dropping random windows of the larger class.
    """
    header = "segment\tstart\tend\tlabel\tsplit\n"
    counts: Dict[str, Dict[str, int]] = {t: {"train": 0, "valid": 0, "test": 0} for t in TASKS}
    with open(os.path.join(dest, "events.tsv")) as f:
        events = list(csv.DictReader(f, delimiter="\t"))
    lines = []
    for event in events:
        onset = int(event["onset_sample"]) / sfreq
        if onset - context < 0 or onset + window + context > PROBE_SEGMENT_SECONDS:
            continue
        split = _split_of(_recording(event["segment"]), n_recordings)
        counts["event"][split] += 1
        lines.append(f"{event['segment']}\t{onset:.4f}\t{onset + window:.4f}\t"
                     f"kind{event['kind']}\t{split}\n")
    with open(os.path.join(dest, "labels_event.tsv"), "w") as f:
        f.write(header + "".join(lines))

    with open(os.path.join(dest, "states.tsv")) as f:
        blocks = list(csv.DictReader(f, delimiter="\t"))
    candidates: Dict[str, Dict[str, List[str]]] = {s: {"on": [], "off": []} for s in SPLITS}
    margin = 0.25
    for block in blocks:
        low = max(float(block["start_s"]) + margin, context)
        high = min(float(block["end_s"]) - margin, PROBE_SEGMENT_SECONDS - context)
        split = _split_of(_recording(block["segment"]), n_recordings)
        start = low
        while start + state_window <= high + 1e-9:
            candidates[split][block["state"]].append(
                f"{block['segment']}\t{start:.4f}\t{start + state_window:.4f}\t"
                f"{block['state']}\t{split}\n")
            start += state_window
    rng = np.random.default_rng(seed)
    lines = []
    for split in SPLITS:
        n = min(len(candidates[split]["on"]), len(candidates[split]["off"]))
        for state in ("off", "on"):
            rows = candidates[split][state]
            keep = np.sort(rng.choice(len(rows), size=n, replace=False)) if rows else []
            lines.extend(rows[i] for i in keep)
        counts["state"][split] = 2 * n
    with open(os.path.join(dest, "labels_state.tsv"), "w") as f:
        f.write(header + "".join(lines))
    return counts


def data_sample_rate(data_dir: str) -> float:
    """Sampling rate (Hz) of a :func:`prepare_data` directory, from its ``data.json``; the
    generator's default where the file is absent (directories made by hand)."""
    info = os.path.join(data_dir, "data.json")
    if not os.path.isfile(info):
        return SFREQ
    with open(info) as f:
        return float(json.load(f)["key"]["generator"].get("sfreq", SFREQ))


def prepare_data(args) -> Dict[str, object]:
    """Generate (or reuse) the pre-training and probe data of these settings.

    Returns ``{"dir", "pretrain", "probe", "key", "counts"}``. Concurrency-safe: a run builds
    into a temporary sibling directory and renames it into place; if another run got there
    first, its copy is used and the temporary one discarded.
    """
    key = data_key(args)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = os.path.abspath(args.data_dir)
    final = os.path.join(root, f"synthetic-{digest}")
    info = os.path.join(final, "data.json")
    if not os.path.isfile(info):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".tmp-{digest}-", dir=root)
        config = generator_config(args)
        try:
            write_synthetic_dataset(os.path.join(tmp, "pretrain"),
                                    n_recordings=args.pretrain_recordings,
                                    seconds_per_recording=args.seconds, n_valid_recordings=2,
                                    seed=0, config=config)
            probe_dir = os.path.join(tmp, "probe")
            write_synthetic_dataset(probe_dir, n_recordings=args.probe_recordings,
                                    seconds_per_recording=args.seconds,
                                    segment_seconds=PROBE_SEGMENT_SECONDS,
                                    n_valid_recordings=0, seed=100000, config=config)
            counts = write_labels(probe_dir, args.probe_recordings, args.window,
                                  args.state_window, args.context, config.sfreq,
                                  args.generator_seed)
            with open(os.path.join(tmp, "data.json"), "w") as f:
                json.dump({"key": key, "counts": counts}, f, indent=2)
            _fix_manifest_roots(tmp, final)
            try:
                os.replace(tmp, final)
            except OSError:  # another run finished first: use its copy
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    with open(info) as f:
        stored = json.load(f)
    return {"dir": final, "pretrain": os.path.join(final, "pretrain"),
            "probe": os.path.join(final, "probe"), "key": stored["key"],
            "counts": stored["counts"]}


def _fix_manifest_roots(tmp: str, final: str) -> None:
    # Manifests hold absolute roots: point them at the final location before the rename.
    for sub in ("pretrain", "probe"):
        for name in ("train.tsv", "valid.tsv"):
            path = os.path.join(tmp, sub, name)
            if os.path.isfile(path):
                with open(path) as f:
                    lines = f.read().splitlines()
                lines[0] = os.path.join(final, sub)
                with open(path, "w") as f:
                    f.write("\n".join(lines) + "\n")


def pretrain_command(data: str, save_dir: str, config: str, budget_minutes: float,
                     max_update: int, seed: int, overrides: Sequence[str],
                     device: str = "auto") -> List[str]:
    """The ``fairseq-hydra-train`` command of one pre-training run."""
    command = [
        "fairseq-hydra-train", "--config-dir", "config/pretraining", "--config-name", config,
        "common.user_dir=meg2vec_fairseq", f"task.data={data}",
        f"checkpoint.save_dir={save_dir}", f"optimization.max_update={max_update}",
        f"optimization.stop_time_hours={budget_minutes / 60.0:.6f}", f"common.seed={seed}",
        "common.log_format=json", "common.log_interval=10", *overrides,
    ]
    if device == "cpu":
        command.append("common.cpu=true")
    return command


def pretrain(command: Sequence[str], log_path: str, threads: Optional[int] = None
             ) -> Dict[str, object]:
    """Run a pre-training command; returns wall time, command and the parsed log."""
    env = dict(os.environ)
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    start = time.time()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        rc = subprocess.call(list(command), cwd=REPO_ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"pre-training failed (rc {rc}); see {log_path}")
    return {"command": list(command), "wall_s": time.time() - start,
            "log": read_log(log_path)["log"]}


def read_log(log_path: str) -> Dict[str, object]:
    """The command (first line) and parsed JSON log of a finished pre-training run."""
    with open(log_path) as f:
        command = f.readline().split()
        text = f.read()
    log = {prefix: parse_fairseq_log(text, prefix) for prefix in ("train_inner", "valid", "train")}
    return {"command": command, "wall_s": None, "log": log}


def logged_values(record: Dict[str, object]) -> Dict[str, object]:
    """``TRAIN_KEYS`` and every criterion term ``loss_<i>`` (one per extra loss) of a log line."""
    terms = sorted((k for k in record if k.startswith("loss_")), key=lambda k: int(k[5:]))
    return {k: record.get(k) for k in (*TRAIN_KEYS, *terms)}


def training_summary(training: Dict[str, object]) -> Dict[str, object]:
    """Updates, wall time, final train/valid values and the highest prob perplexity."""
    train_log = training["log"]["train_inner"]
    last = train_log[-1] if train_log else {}
    last_valid = training["log"]["valid"][-1] if training["log"]["valid"] else {}
    return {
        "updates": last.get("num_updates"),
        "wall_s": training["wall_s"],
        "final_train": logged_values(last),
        "final_valid": logged_values(last_valid),
        "max_prob_perplexity": max((r.get("prob_perplexity", 0) for r in train_log),
                                   default=None),
        "command": training["command"],
    }


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


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device}: CUDA is not available")
    return device


def fraction_name(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _strip(run: Dict[str, object], **extra) -> Dict[str, object]:
    keep = ("seed", "C", "valid_macro_f1", "macro_f1", "balanced_accuracy", "n_train",
            "best_epoch", "confusion")
    return {**{k: run[k] for k in keep if k in run}, **extra}


def evaluate_checkpoints(dataset, windows, checkpoints: Dict[int, str], args, device: str,
                         log) -> Dict[str, List[Dict[str, object]]]:
    """Probe rows per ``--layers`` and fine-tune rows of each pre-training seed's checkpoint."""
    rows: Dict[str, List[Dict[str, object]]] = {}
    for pretrain_seed, path in checkpoints.items():
        trained = checkpoint_source(path)
        model = trained.model.to(device)
        specs = []
        for text in args.layers:
            suffix = "" if text == args.layers[0] else f" (layer {text})"
            source = ModelSource(model, parse_layer(text), trained.normalize,
                                    name="checkpoint" + suffix, origin=path)
            specs.append(SourceSpec("checkpoint" + suffix, lambda seed, s=source: s))
        result = run_probe(dataset, specs, args.seeds, log=log)
        for source in result["sources"]:
            rows.setdefault(f"probe {source['name']}", []).extend(
                _strip(r, pretrain_seed=pretrain_seed) for r in source["per_seed"])
        options = finetune_options(args)
        for fraction in args.finetune_fractions:
            name = f"fine-tune {fraction_name(fraction)} checkpoint"
            for seed in args.seeds:
                run = finetune(dataset, model, trained.normalize, fraction, seed, options,
                               device=device, windows=windows)
                log(f"{name} (pre-training seed {pretrain_seed}) seed {seed}: best epoch "
                    f"{run['best_epoch']}, test macro-F1 {run['macro_f1']:.3f}")
                rows.setdefault(name, []).append(_strip(run, pretrain_seed=pretrain_seed))
    return rows


def finetune_options(args) -> FinetuneOptions:
    """The fine-tuning options of the command line (the first ``--layers`` entry is tuned)."""
    return FinetuneOptions(epochs=args.finetune_epochs, layer=parse_layer(args.layers[0]),
                           probe_init=args.finetune_probe_init,
                           pooling=args.finetune_pooling,
                           lr_encoder=args.finetune_lr_encoder)


def evaluate_baselines(dataset, windows, architecture: str, args, device: str,
                       log) -> Dict[str, List[Dict[str, object]]]:
    """Random-init probe rows (fresh weights per seed), raw sensors, random-init fine-tuning."""
    specs = []
    for text in args.layers:
        suffix = "" if text == args.layers[0] else f" (layer {text})"
        specs.append(random_init_spec(architecture, parse_layer(text), dataset.n_channels,
                                      device, name="random-init" + suffix))
    specs.append(SourceSpec("raw", lambda seed: RawSource()))
    result = run_probe(dataset, specs, args.seeds, log=log)
    rows: Dict[str, List[Dict[str, object]]] = {}
    for source in result["sources"]:
        rows[f"probe {source['name']}"] = [_strip(r) for r in source["per_seed"]]
    options = finetune_options(args)
    for fraction in args.finetune_fractions:
        name = f"fine-tune {fraction_name(fraction)} random-init"
        for seed in args.seeds:
            model, normalize = build_random_model(architecture, seed, dataset.n_channels)
            run = finetune(dataset, model, normalize, fraction, seed, options, device=device,
                           windows=windows)
            log(f"{name} seed {seed}: best epoch {run['best_epoch']}, test macro-F1 "
                f"{run['macro_f1']:.3f}")
            rows.setdefault(name, []).append(_strip(run))
    return rows


def summarise_row(runs: List[Dict[str, object]]) -> Dict[str, object]:
    """Mean ± std over all runs (pre-training seeds x probe seeds) and per pre-training seed."""
    row: Dict[str, object] = {
        "runs": runs,
        "macro_f1": summarise([r["macro_f1"] for r in runs]),
        "balanced_accuracy": summarise([r["balanced_accuracy"] for r in runs]),
    }
    seeds = sorted({r["pretrain_seed"] for r in runs if "pretrain_seed" in r})
    if seeds:
        row["by_pretrain_seed"] = {
            str(s): {m: summarise([r[m] for r in runs if r.get("pretrain_seed") == s])
                     for m in ("macro_f1", "balanced_accuracy")} for s in seeds}
    return row


ROW_ORDER = ("probe checkpoint", "probe random-init", "probe raw", "fine-tune")


def ordered_rows(names: Sequence[str]) -> List[str]:
    """Probe rows (checkpoint, random-init, raw; extra layers after their headline row), then
    fine-tuning rows by fraction (checkpoint before random-init)."""
    def key(name: str):
        if name.startswith("fine-tune"):
            fraction = float(name.split()[1].rstrip("%"))
            return (3, fraction, "random-init" in name, name)
        for i, prefix in enumerate(ROW_ORDER[:3]):
            if name.startswith(prefix):
                return (i, 0.0, "(layer" in name, name)
        return (4, 0.0, False, name)
    return sorted(names, key=key)


def markdown_tables(result: Dict[str, object]) -> str:
    """Per task: a row per source (mean ± std) and chance; then the pre-training summary."""
    parts = []
    n_pretrain = len(result["pretraining"]) or 1
    for task, entry in result["tasks"].items():
        counts = entry["counts"]
        parts.append(f"### {task} ({len(entry['classes'])} classes; test windows "
                     f"{sum(counts['test'])}, train {sum(counts['train'])}, valid "
                     f"{sum(counts['valid'])})\n")
        parts.append("| features | macro-F1 (mean ± std) | balanced accuracy | runs |\n"
                     "|---|---|---|---|")
        for name in ordered_rows(list(entry["rows"])):
            row = entry["rows"][name]
            f1, ba = row["macro_f1"], row["balanced_accuracy"]
            parts.append(f"| {name} | {f1['mean']:.3f} ± {f1['std']:.3f} | "
                         f"{ba['mean']:.3f} ± {ba['std']:.3f} | {f1['n']} |")
        chance = entry["chance"]
        parts.append(f"| chance | {chance['macro_f1']:.3f} | {chance['balanced_accuracy']:.3f} "
                     "| |\n")
    n_seeds = len(result["benchmark"]["seeds"])
    parts.append(f"checkpoint rows: {n_pretrain} pre-training seed(s) x {n_seeds} probe "
                 "seed(s); random-init and raw: probe seeds only.\n")
    if result["pretraining"]:
        parts.append("| pre-training seed | updates | wall s | contrastive acc. train / valid "
                     "| code perplexity train / valid | prob perplexity train |\n"
                     "|---|---|---|---|---|---|")
        for seed, summary in result["pretraining"].items():
            t, v = summary["final_train"], summary["final_valid"]
            wall = f"{summary['wall_s']:.0f}" if summary.get("wall_s") else "-"
            parts.append(f"| {seed} | {summary['updates']} | {wall} | "
                         f"{_fmt(t.get('accuracy'))} / {_fmt(v.get('accuracy'))} | "
                         f"{_fmt(t.get('code_perplexity'), 1)} / "
                         f"{_fmt(v.get('code_perplexity'), 1)} | "
                         f"{_fmt(t.get('prob_perplexity'), 1)} |")
    return "\n".join(parts) + "\n"


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plot_task(entry: Dict[str, object], task: str, path: str) -> None:
    """Bar chart of every row of one task (probing.report.plot_result's layout)."""
    sources = [{"name": name, "per_seed": entry["rows"][name]["runs"],
                "macro_f1": entry["rows"][name]["macro_f1"],
                "balanced_accuracy": entry["rows"][name]["balanced_accuracy"]}
               for name in ordered_rows(list(entry["rows"]))]
    plot_result({"dataset": {"name": task}, "chance": entry["chance"], "sources": sources},
                   path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/probe_synthetic")
    parser.add_argument("--data-dir", default="outputs/synthetic_data",
                        help="where generated data lives, one directory per generator setting, "
                        "reused by later runs with the same settings")
    parser.add_argument("--config", default="meg2vec_tiny", help="config/pretraining/<name>.yaml")
    parser.add_argument("--budget-minutes", type=float, default=15.0,
                        help="wall-clock pre-training budget per seed (default 15)")
    parser.add_argument("--max-update", type=int, default=6000,
                        help="update cap, also the length of the lr decay (default 6000; "
                        "on shared cores the time budget usually ends training first)")
    parser.add_argument("--pretrain-seeds", type=int, nargs="+", default=[1],
                        help="one pre-training run per seed (common.seed; default 1)")
    parser.add_argument("--pretrain-recordings", type=int, default=PRETRAIN_RECORDINGS,
                        help=f"unlabelled pre-training recordings (default {PRETRAIN_RECORDINGS}; "
                        "24 before round 24 of docs/pretraining_research.md)")
    parser.add_argument("--probe-recordings", type=int, default=45,
                        help="held-out recordings for the probes, split 60/20/20 (default 45; "
                        "with 15 the state scores were recording-specific, "
                        "docs/pretraining_research.md)")
    parser.add_argument("--seconds", type=float, default=40.0, help="per recording")
    parser.add_argument("--event-snr", type=float, default=SyntheticMEGConfig.event_snr)
    parser.add_argument("--event-kinds", type=parse_event_kinds, default=None,
                        help="event task: the kinds, DURATION:CARRIER in s and Hz (0: evoked-"
                        "like), comma-separated; default the generator's "
                        f"{format_event_kinds(EVENT_KINDS)}")
    parser.add_argument("--n-sensors", type=int, default=N_SENSORS,
                        help="sensors of the synthetic data (default %(default)s, Neuromag); "
                        "pre-training gets task.in_channels to match")
    parser.add_argument("--sfreq", type=int, default=int(SFREQ),
                        help="sampling rate (Hz) of the synthetic data (default %(default)s, "
                        "LibriBrain's); pre-training gets task.sample_rate to match")
    parser.add_argument("--rhythm-bandwidth", type=float, default=2.0,
                        help="line width (Hz) of the synthetic alpha/beta rhythms (default 2; "
                        "0: the generator's pure sinusoids, whose phase alone identifies a "
                        "frame)")
    parser.add_argument("--generator-seed", type=int, default=SyntheticMEGConfig.layout_seed,
                        help="layout seed: sensor positions and topographies (default 1234)")
    parser.add_argument("--state-alpha-suppression", type=float,
                        default=SyntheticMEGConfig.state_alpha_suppression,
                        help="state task: fraction by which the alpha rhythm's amplitude drops "
                        "in 'on' blocks (default %(default)s)")
    parser.add_argument("--state-response", type=float,
                        default=SyntheticMEGConfig.state_response,
                        help="state task: amplitude of the 1-8 Hz auditory response in 'on' "
                        "blocks (default %(default)s)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--window", type=float, default=0.5,
                        help="event task: span from the event onset (s)")
    parser.add_argument("--state-window", type=float, default=1.0,
                        help="state task: span inside a state block (s)")
    parser.add_argument("--context", type=float, default=1.0,
                        help="signal each side of the span the models see (s)")
    parser.add_argument("--layers", nargs="+", default=["cnn+last", "last", "cnn"],
                        help="layers to probe for the checkpoint and random-init: 0-based "
                        "Transformer layers, 'last', 'cnn' or depths joined by '+' "
                        "('cnn+last': both side by side); the first is the headline row and "
                        "the fine-tuned layer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="probe / fine-tune seeds")
    parser.add_argument("--finetune-fractions", type=float, nargs="*", default=[0.1, 1.0],
                        help="fractions of the training windows to fine-tune on (none: skip)")
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--finetune-probe-init", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="start fine-tuning from the linear probe of the initial encoder "
                        "(LP-FT; default since research round 12) or from a fresh head (--no-)")
    parser.add_argument("--finetune-pooling", choices=("mean", "meanstd"), default="meanstd",
                        help="what the fine-tuning head reads of the span's frames (meanstd, "
                        "the default since research round 12: as the linear probe; mean: "
                        "rounds 1-11)")
    parser.add_argument("--finetune-lr-encoder", type=float,
                        default=FinetuneOptions.lr_encoder,
                        help="AdamW learning rate of the encoder while fine-tuning (the head's "
                        f"stays {FinetuneOptions.lr_head:g}); default %(default)g")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available), cpu or cuda, for probes, fine-tuning "
                        "and (cpu forces it) pre-training")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch / OMP threads of this process and of pre-training")
    parser.add_argument("--evaluate", choices=("all", "checkpoint", "baselines"), default="all",
                        help="which rows: all, only the checkpoint rows, or only random-init "
                        "and raw (no pre-training; architecture from --random-init-from)")
    parser.add_argument("--random-init-from", default=None,
                        help="checkpoint or config whose architecture random-init uses "
                        "(default: the first pre-training seed's checkpoint)")
    parser.add_argument("--reuse-checkpoint", action="store_true",
                        help="probe OUT/seed-<k>/checkpoints/checkpoint_last.pt without "
                        "re-training")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="extra hydra override for pre-training (repeatable), e.g. "
                        "--set model.mask_prob=0.65")
    args = parser.parse_args(argv)
    for fraction in args.finetune_fractions:
        if not 0 < fraction <= 1:
            parser.error(f"--finetune-fractions: {fraction} is not in (0, 1]")
    if args.finetune_epochs <= 0:
        parser.error(f"--finetune-epochs must be positive, got {args.finetune_epochs}")
    if not args.finetune_lr_encoder > 0:
        parser.error(f"--finetune-lr-encoder must be positive, got {args.finetune_lr_encoder}")
    problem = data_problem(args)
    if problem:
        parser.error(problem)
    logging.getLogger().setLevel(logging.WARNING)  # importing fairseq leaves the root at DEBUG
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data = prepare_data(args)
    print(f"data: {data['dir']}; windows per split: {data['counts']}", flush=True)

    checkpoints: Dict[int, str] = {}
    pretraining: Dict[str, object] = {}
    if args.evaluate != "baselines":
        for seed in args.pretrain_seeds:
            seed_dir = os.path.join(out, f"seed-{seed}")
            save_dir = os.path.join(seed_dir, "checkpoints")
            log_path = os.path.join(seed_dir, "pretrain.log")
            os.makedirs(seed_dir, exist_ok=True)
            if args.reuse_checkpoint:
                training = read_log(log_path)
            else:
                if os.path.isdir(save_dir):
                    shutil.rmtree(save_dir)
                print(f"pre-training {args.config} (seed {seed}) for at most "
                      f"{args.budget_minutes} min / {args.max_update} updates ...", flush=True)
                command = pretrain_command(data["pretrain"], save_dir, args.config,
                                           args.budget_minutes, args.max_update, seed,
                                           [*data_overrides(args), *args.overrides], device)
                training = pretrain(command, log_path, args.threads)
            summary = training_summary(training)
            pretraining[str(seed)] = summary
            checkpoints[seed] = os.path.join(save_dir, "checkpoint_last.pt")
            plot_training(training["log"], os.path.join(seed_dir, "training.png"),
                          f"{args.config} seed {seed} on synthetic MEG "
                          f"({' '.join(args.overrides) or 'shipped'})")
            print(f"pre-training seed {seed}: {summary['updates']} updates; final train "
                  f"accuracy {summary['final_train']['accuracy']}, code_perplexity "
                  f"{summary['final_train']['code_perplexity']}", flush=True)
    architecture = args.random_init_from or (
        next(iter(checkpoints.values())) if checkpoints else args.config)

    tasks: Dict[str, object] = {}
    for task in args.tasks:
        dataset = task_dataset(data, task, args.context)
        windows = read_windows(dataset) if args.finetune_fractions else None
        rows: Dict[str, List[Dict[str, object]]] = {}
        if args.evaluate in ("all", "checkpoint"):
            rows.update(evaluate_checkpoints(dataset, windows, checkpoints, args, device, log))
        if args.evaluate in ("all", "baselines"):
            rows.update(evaluate_baselines(dataset, windows, architecture, args, device, log))
        labels = {s: dataset.labels(s) for s in SPLITS}
        n_classes = len(dataset.class_names)
        tasks[task] = {
            "classes": dataset.class_names,
            "counts": {s: np.bincount(labels[s], minlength=n_classes).tolist()
                       for s in SPLITS},
            "chance": chance_levels(labels["test"], n_classes),
            "rows": {name: summarise_row(runs) for name, runs in rows.items()},
        }
        plot_task(tasks[task], task, os.path.join(out, f"probe_{task}.png"))

    result = {
        "benchmark": dict(vars(args)),
        "device": device,
        "data": {k: data[k] for k in ("dir", "key", "counts")},
        "pretraining": pretraining,
        "random_init_architecture": architecture,
        "tasks": tasks,
    }
    write_json(result, os.path.join(out, "result.json"))
    table = markdown_tables(result)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"wrote {out}/result.json, table.md, probe_<task>.png, seed-<k>/training.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
