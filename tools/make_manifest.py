#!/usr/bin/env python
"""Raw MEG -> preprocessed ``.npy`` segments + fairseq TSV manifests.

Subcommands (one small function each; a new input type adds ``add_<name>_args`` +
``cmd_<name>`` and an entry in :data:`SUBCOMMANDS`)::

    python tools/make_manifest.py raw ROOT [ROOT ...] --dest MANIFEST_DIR [options]
    python tools/make_manifest.py bids BIDS_ROOT --dest MANIFEST_DIR [--subjects ...]
    python tools/make_manifest.py libribrain DATA_PATH --dest MANIFEST_DIR [--download ...]

Writes ``train.tsv``/``valid.tsv`` (first line: absolute segments root; then
``relative/path.npy<TAB>num_time_samples``), the segments (``MANIFEST_DIR/segments/``
unless ``--segments-dir``), ``report.json`` and ``qc.png``. Exit code 0 when nothing
failed, 1 when any recording failed (the others are still processed) or another run holds
``--dest`` or the segments folder, 2 for usage errors and unusable output folders, 130 on
Ctrl-C. Interrupted runs resume: run the same command again.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from meg2vec_fairseq.cli import ToolParser, flag_message, option_flags
from meg2vec_fairseq.constants import N_SENSORS, SFREQ
from meg2vec_fairseq.errors import LibriBrainError, OutputLockedError, OutputPathError
from meg2vec_fairseq.preprocessing import manifests
from meg2vec_fairseq.preprocessing.libribrain import STATS_FILENAME, parse_run_key
from meg2vec_fairseq.preprocessing.ownership import check_output_dir
from meg2vec_fairseq.preprocessing.params import PNPL_DEFAULT, LibriBrainConfig, PreprocessParams

#: Ctrl-C ends the run with this line on stderr and exit code 130.
INTERRUPTED = "interrupted; re-run the same command to resume"


class CommandError(Exception):
    """Ends the command with ``error: <message>`` on stderr and exit code ``code``."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------ options
def _finite(text: str) -> float:
    """argparse type: a finite float (nan/inf are usage errors, not tracebacks later)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _glob(text: str) -> str:
    """argparse type: a non-empty glob (pathlib refuses an empty pattern)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty pattern")
    return text


def add_output_options(p: argparse.ArgumentParser) -> None:
    """Options every subcommand shares: outputs, split, parallelism."""
    g = p.add_argument_group("output")
    g.add_argument("--dest", required=True, type=Path, metavar="MANIFEST_DIR",
                   help="output directory for train.tsv, valid.tsv, report.json, qc.png "
                        "(and segments/, see --segments-dir); created if missing")
    g.add_argument("--segments-dir", type=Path, default=None, metavar="DIR",
                   help="where the .npy segments go (default: MANIFEST_DIR/segments); the "
                        "manifests' first line is its absolute path")
    g.add_argument("--valid-percent", type=_finite, default=0.1, metavar="P",
                   help="fraction of recordings (not segments) for valid.tsv, in [0, 1); "
                        "with a single recording, the last fraction P of it in time "
                        "(default: 0.1)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the deterministic train/valid split (default: 0)")
    g.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="recordings processed in parallel, one process each (default: 1)")
    g.add_argument("--overwrite", action="store_true",
                   help="reprocess recordings even if an earlier run finished them "
                        "(default: reuse finished recordings, redo unfinished ones)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-qc", action="store_true", help="do not draw qc.png")


def add_preprocessing_options(p: argparse.ArgumentParser) -> None:
    """Signal options (raw and bids); defaults match LibriBrain (250 Hz) and the seed."""
    g = p.add_argument_group("preprocessing")
    g.add_argument("--sfreq", type=_finite, default=SFREQ,
                   help=f"output sampling rate in Hz (polyphase resampling; default: {SFREQ:g})")
    g.add_argument("--l-freq", type=_finite, default=1.0,
                   help="band-pass low edge in Hz, 0 for none (default: 1)")
    g.add_argument("--h-freq", type=_finite, default=40.0,
                   help="band-pass high edge in Hz, 0 for none; must be below --sfreq/2 "
                        "(default: 40)")
    g.add_argument("--segment-seconds", type=_finite, default=5.0,
                   help="segment length in seconds (default: 5)")
    g.add_argument("--n-channels", type=int, default=N_SENSORS,
                   help="rows per segment: MEG channels padded with zeros or truncated "
                        f"(default: {N_SENSORS})")
    g.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the saved segments (default: float32)")
    g.add_argument("--chunk-seconds", type=_finite, default=10.0,
                   help="seconds read per step; bounds memory, does not change the output "
                        "(default: 10)")
    g.add_argument("--no-fsync", action="store_true",
                   help="do not fsync each segment (faster on slow disks; a power cut may "
                        "then leave empty files, a killed process still cannot)")


def _usage_error(parser: argparse.ArgumentParser, err: Exception):
    """A library message about an option, in the command line's words (exit 2)."""
    parser.error(flag_message(str(err), option_flags(parser)))


def _output_options(args) -> manifests.OutputOptions:
    return manifests.OutputOptions(
        dest=args.dest, segments_dir=args.segments_dir, valid_percent=args.valid_percent,
        seed=args.seed, jobs=args.jobs, overwrite=args.overwrite,
        progress=not args.no_progress, qc=not args.no_qc)


def _mne_options(args, parser):
    """Output and preprocessing options of ``raw``/``bids``, checked (usage error: exit 2)."""
    out = _output_options(args)
    params = PreprocessParams(
        sfreq=args.sfreq, l_freq=args.l_freq, h_freq=args.h_freq,
        segment_seconds=args.segment_seconds, n_channels=args.n_channels,
        dtype=args.dtype, chunk_seconds=args.chunk_seconds, fsync=not args.no_fsync)
    try:
        out.validate()
        params.validate()
    except ValueError as err:
        _usage_error(parser, err)
    return out, params


def _locked_run(fn, *a, **kw):
    """Run a driver; a folder held by another run is exit 1, one that cannot be made exit 2."""
    try:
        return fn(*a, **kw)
    except OutputLockedError as err:
        raise CommandError(str(err), 1) from None
    except OutputPathError as err:
        raise CommandError(str(err), 2) from None


# -------------------------------------------------------------------- subcommands
def add_raw_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("roots", nargs="+", metavar="ROOT",
                   help="directory searched recursively, or a single recording (file or "
                        "CTF .ds folder)")
    p.add_argument("--pattern", action="append", metavar="GLOB", default=None, type=_glob,
                   help="glob for recording names, repeatable (default: *.fif *.fif.gz "
                        "*.ds *.sqd *.con c,rf*); derived FIF files (-epo, -cov, ...) and "
                        "split-file continuations are always skipped")
    add_preprocessing_options(p)
    add_output_options(p)


def cmd_raw(args, parser) -> int:
    out, params = _mne_options(args, parser)
    run = _locked_run(manifests.make_raw_manifests, args.roots, params, out, args.pattern,
                      command=args.command_line)
    return finish(run, parser)


def add_bids_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bids_root", metavar="BIDS_ROOT", type=Path, help="BIDS dataset root")
    p.add_argument("--subjects", nargs="+", default=None, metavar="LABEL",
                   help="only these subjects (labels without 'sub-')")
    p.add_argument("--sessions", nargs="+", default=None, metavar="LABEL",
                   help="only these sessions (labels without 'ses-')")
    p.add_argument("--tasks", nargs="+", default=None, metavar="LABEL",
                   help="only these tasks (labels without 'task-')")
    p.add_argument("--runs", nargs="+", default=None, metavar="LABEL",
                   help="only these runs (labels without 'run-')")
    add_preprocessing_options(p)
    add_output_options(p)


def cmd_bids(args, parser) -> int:
    out, params = _mne_options(args, parser)
    entities = {"subjects": args.subjects, "sessions": args.sessions, "tasks": args.tasks,
                "runs": args.runs}
    run = _locked_run(manifests.make_bids_manifests, args.bids_root, params, out, entities,
                      command=args.command_line)
    return finish(run, parser)


def finish(run: manifests.ManifestRun, parser) -> int:
    """Print the summary of a ``raw``/``bids`` run; returns the exit code (0 or 1)."""
    s, out, flags = run.summary, run.outputs, option_flags(parser)
    n_train, n_valid = len(out["splits"]["train"]), len(out["splits"]["valid"])
    print(f"{s['recordings']} recording(s): {s['ok']} ok, {s['skipped']} already done, "
          f"{s['failed']} failed; {s['segments_written']} segments "
          f"({s['seconds_kept']:.1f} s; train {n_train}, valid {n_valid}); "
          f"dropped {s['segments_dropped'] or 0}; {len(run.not_used)} file(s) not used; "
          f"{run.elapsed_s:.1f} s")
    for r in run.results:
        if r.status == "failed":
            print(f"  FAILED {r.recording_id}: {flag_message(r.reason, flags)}")
    print(f"manifests: {out['manifests']['train']} {out['manifests']['valid']}; "
          f"report: {out['report']}" + (f"; qc: {out['qc']}" if out["qc"] else ""))
    return 1 if run.failed else 0


def add_libribrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_path", metavar="DATA_PATH", type=Path,
                   help="pnpl's data_path: the directory holding Sherlock1/ ... (created "
                        "only with --download)")
    g = p.add_argument_group("LibriBrain (pnpl owns run keys, partitions, file names)")
    g.add_argument("--dataset", choices=("libribrain", "libribrain100"), default="libribrain",
                   help="pnpl's LibriBrain or LibriBrain100 run list (default: libribrain)")
    g.add_argument("--train-partition", default="train", metavar="NAME",
                   help="pnpl partition for train.tsv and the statistics (default: train)")
    g.add_argument("--valid-partition", default="validation", metavar="NAME",
                   help="pnpl partition for valid.tsv, 'none' for no valid runs "
                        "(default: validation)")
    for side in ("train", "valid"):
        g.add_argument(f"--{side}-run-keys", nargs="+", default=[], metavar="SUB,SES,TASK,RUN",
                       help=f"explicit {side} runs, e.g. 0,1,Sherlock1,1; override "
                            f"--{side}-partition")
    g.add_argument("--exclude-run-keys", nargs="+", default=[], metavar="SUB,SES,TASK,RUN",
                   help="runs left out of both train and valid")
    g.add_argument("--preprocessing-str", default=PNPL_DEFAULT, metavar="P",
                   help="the _proc-<P> part of pnpl's file names, 'none' for none "
                        "(default: pnpl's, bads+headpos+sss+notch+bp+ds)")
    g.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=True,
                   help="z-score each channel with the training runs' mean/std (default: on)")
    g.add_argument("--clip", default="10", metavar="C",
                   help="then clip to [-C, C] like pnpl, 'none' for no clip (default: 10)")
    g.add_argument("--download", action=argparse.BooleanOptionalAction, default=False,
                   help="fetch missing runs through pnpl (network); default off: nothing "
                        "touches the network and a missing file is an error for that run")
    g.add_argument("--segment-seconds", type=_finite, default=5.0,
                   help="segment length in seconds (default: 5)")
    g.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the saved segments (default: float32)")
    g.add_argument("--chunk-seconds", type=_finite, default=30.0,
                   help="seconds read per step; bounds memory (default: 30)")
    g.add_argument("--no-fsync", action="store_true", help="do not fsync each segment")
    add_output_options(p)
    # The split is pnpl's partitions (or explicit run keys), never a random one: hide the
    # random-split options (still parsed, so that using them is a clear error).
    for action in p._actions:
        if action.dest in ("valid_percent", "seed"):
            action.help = argparse.SUPPRESS
    p.set_defaults(valid_percent=None, seed=None)


def cmd_libribrain(args, parser) -> int:
    none = ("none", "")
    try:
        if args.valid_percent is not None or args.seed is not None:
            raise LibriBrainError("--valid-percent/--seed do not apply: the split is "
                                  "--valid-partition or --valid-run-keys")
        cfg = LibriBrainConfig(
            data_path=str(args.data_path), dest=str(args.dest), dataset=args.dataset,
            train_partition=None if args.train_partition.lower() in none else args.train_partition,
            valid_partition=None if args.valid_partition.lower() in none else args.valid_partition,
            train_run_keys=[parse_run_key(k) for k in args.train_run_keys],
            valid_run_keys=[parse_run_key(k) for k in args.valid_run_keys],
            exclude_run_keys=[parse_run_key(k) for k in args.exclude_run_keys],
            preprocessing_str=None if args.preprocessing_str.lower() in none
            else args.preprocessing_str,
            standardize=args.standardize,
            clip=None if args.clip.lower() in none else float(args.clip),
            download=args.download, segment_seconds=args.segment_seconds, dtype=args.dtype,
            jobs=args.jobs, overwrite=args.overwrite, chunk_seconds=args.chunk_seconds,
            segments_root=str(args.segments_dir) if args.segments_dir else None,
            progress=not args.no_progress, qc=not args.no_qc, fsync=not args.no_fsync)
        selection = manifests.check_libribrain(cfg)
    except ValueError as err:  # LibriBrainError is a ValueError
        _usage_error(parser, err)
    try:
        run = _locked_run(manifests.make_libribrain_run, cfg, selection,
                          command=args.command_line)
    except LibriBrainError as err:
        print(f"error: {flag_message(str(err), option_flags(parser))}", file=sys.stderr)
        return 1
    s, summary = run.outputs["splits"], run.summary
    print(f"{summary['recordings']} run(s): {summary['ok']} ok, {summary['skipped']} already "
          f"done, {summary['failed']} failed; train {len(s['train'])}, valid "
          f"{len(s['valid'])} segments; {run.elapsed_s:.1f} s")
    for r in run.results:
        if r.status == "failed":
            print(f"  FAILED {r.recording_id}: {flag_message(r.reason, option_flags(parser))}")
    print(f"manifests: {run.outputs['manifests']['train']} "
          f"{run.outputs['manifests']['valid']}; statistics: "
          f"{Path(cfg.dest) / STATS_FILENAME}; report: {run.outputs['report']}")
    return 1 if run.failed else 0


#: name -> (add arguments, run, help). Add new input types here.
SUBCOMMANDS = {
    "raw": (add_raw_args, cmd_raw,
            "recordings MNE reads (.fif, CTF .ds, KIT .sqd/.con, BTi c,rf*) under ROOTs"),
    "bids": (add_bids_args, cmd_bids, "MEG recordings of a BIDS dataset (mne-bids)"),
    "libribrain": (add_libribrain_args, cmd_libribrain,
                   "LibriBrain runs as pnpl lays them out (HDF5), offline by default"),
}


def build_parser() -> argparse.ArgumentParser:
    # ToolParser: a usage error is the usage line plus one ``error: ...`` line, exit 2,
    # like every tool (argparse's own "make_manifest.py raw: error: ..." otherwise).
    parser = ToolParser(
        prog="make_manifest.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # The subcommand parsers are of the same class (argparse's default parser_class).
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=ToolParser)
    for name, (add_args, run, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run, subparser=p)
    return parser


def _check_output_paths(args) -> None:
    """``--dest`` and the segments folder must be (creatable) writable folders: exit 2."""
    folders = [("--dest", args.dest)]
    folders.append(("--segments-dir", args.segments_dir) if args.segments_dir is not None
                   else ("segments folder", args.dest / "segments"))
    for what, path in folders:
        try:
            check_output_dir(path, what)
        except OutputPathError as err:
            raise CommandError(str(err), 2) from None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["make_manifest.py",
                                    *(sys.argv[1:] if argv is None else argv)])
    try:
        _check_output_paths(args)
        return args.run(args, args.subparser)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:  # everything written so far is resumable (locks released)
        print(INTERRUPTED, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
