"""Every command line over a table of bad inputs: a clear exit, no traceback, one culprit.

For each case: the exit status (2 usage, 1 data), no ``Traceback`` in stdout + stderr, and
exactly one line ``error: ...`` that names the culprit (option, file or row), never
argparse's ``prog: error: ...`` (every tool's parser, make_manifest's subcommands included,
is :class:`meg2vec_fairseq.cli.ToolParser`). Python tools run in-process (``main(argv)``,
their real argument parsing; fast); the fairseq commands and one case per tool run as real
subprocesses from the repository root.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from meg_fixtures import (
    REPO_ROOT,
    VENV_BIN,
    ToolRun,
    parse_fairseq_log,
    random_segments,
    run_command,
    write_manifest,
)

from meg2vec_fairseq.synthetic import SyntheticMEGConfig, write_synthetic_dataset

ERROR_LINE = re.compile(r"^error: ")
ARGPARSE_ERROR = re.compile(r"^\S+\.py( \w+)?: error: ", re.MULTILINE)
TOOLS = ("make_manifest", "make_demo_data", "extract_features", "probe")


def _load(name):
    return ToolRun(name)


@pytest.fixture(scope="module")
def tools():
    return {name: _load(name) for name in TOOLS}


def train_command(data, save_dir, max_update, *extra):
    return ["fairseq-hydra-train", "--config-dir", "config/pretraining", "--config-name",
            "meg2vec_tiny", "common.user_dir=meg2vec_fairseq", f"task.data={data}",
            f"checkpoint.save_dir={save_dir}", f"optimization.max_update={max_update}",
            "common.log_interval=1", *extra]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """Small inputs shared by the table: synthetic data, labels, a 1-update checkpoint."""
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    write_synthetic_dataset(str(data), n_recordings=4, seconds_per_recording=10,
                            n_valid_recordings=1, seed=2,
                            config=SyntheticMEGConfig(events_per_second=1.5))
    a_file = root / "a_file"
    a_file.write_text("not a directory\n")
    fifo = root / "fifo"
    os.mkfifo(fifo)
    segs = [line.split("\t")[0] for line in (data / "train.tsv").read_text().splitlines()[1:]]
    labels = root / "labels.tsv"
    rows = [f"{seg}\t0.0\t0.5\t{'ab'[i % 2]}\t{('train', 'train', 'valid', 'test')[i % 4]}"
            for i, seg in enumerate(segs)]
    labels.write_text("segment\tstart\tend\tlabel\tsplit\n" + "\n".join(rows) + "\n")
    # extract_features inputs: a segment shorter than the tiny stack's 60-sample receptive field
    short = root / "short"
    write_manifest(short, random_segments(1, samples=400) + random_segments(1, samples=40),
                   split="valid")
    absurd = root / "absurd"
    segments = random_segments(2, samples=400)
    segments[1][:] = 1e30
    write_manifest(absurd, segments, split="valid")
    duplicate = root / "dup"
    manifest = write_manifest(duplicate, random_segments(1, samples=400), split="valid")
    manifest.write_text(manifest.read_text() + "valid-000.npy\t400\n")
    save_dir = root / "ckpt"
    result = run_command(train_command(data, save_dir, 1, "dataset.disable_validation=true"))
    assert result.returncode == 0, result.stderr[-2000:]
    return {"root": root, "data": data, "file": a_file, "fifo": fifo, "labels": labels,
            "segs": segs, "short": short, "absurd": absurd, "dup": duplicate,
            "ckpt": save_dir / "checkpoint_last.pt"}


def _probe(c, *extra, labels=None):
    return ["--manifest", str(c["data"] / "train.tsv"), "--labels", str(labels or c["labels"]),
            "--raw", "--seeds", "0", "--C", "1", "--quiet", *extra]


def _labels_with(c, name, row):
    path = c["root"] / name
    lines = c["labels"].read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], row, *lines[2:]]) + "\n")
    return path


def _probe_row(c, name, row):
    return _probe(c, labels=_labels_with(c, name, row))


def _extract(c, manifest, dest="feat", *extra):
    return ["--checkpoint", str(c["ckpt"]), "--manifest", str(manifest), "--dest",
            str(c["root"] / dest if isinstance(dest, str) else dest), *extra]


def _demo(c, *extra, dest="demo"):
    return ["--dest", str(c["root"] / dest), "--recordings", "2", "--seconds", "5",
            "--valid-recordings", "1", "--channels", "8", *extra]


def _mm(c, sub, *extra, dest="mm"):
    first = {"raw": str(c["root"]), "bids": str(c["root"]), "libribrain": str(c["root"])}[sub]
    return [sub, first, "--dest", str(c["root"] / dest), "--no-progress", "--no-qc", *extra]


# (id, tool, argv builder, exit status, text the error line must contain)
CASES = [
    # make_manifest: options checked before any recording is read
    ("mm-raw-empty-pattern", "make_manifest", lambda c: _mm(c, "raw", "--pattern", ""), 2,
     "--pattern"),
    ("mm-raw-blank-pattern", "make_manifest", lambda c: _mm(c, "raw", "--pattern", " "), 2,
     "--pattern"),
    ("mm-raw-inf-segment", "make_manifest", lambda c: _mm(c, "raw", "--segment-seconds", "inf"),
     2, "--segment-seconds"),
    ("mm-raw-negative-segment", "make_manifest",
     lambda c: _mm(c, "raw", "--segment-seconds", "-1"), 2, "--segment-seconds"),
    ("mm-raw-nan-sfreq", "make_manifest", lambda c: _mm(c, "raw", "--sfreq", "nan"), 2,
     "--sfreq"),
    ("mm-raw-zero-jobs", "make_manifest", lambda c: _mm(c, "raw", "--jobs", "0"), 2, "--jobs"),
    ("mm-raw-zero-channels", "make_manifest", lambda c: _mm(c, "raw", "--n-channels", "0"), 2,
     "--n-channels"),
    ("mm-raw-valid-percent-1.5", "make_manifest",
     lambda c: _mm(c, "raw", "--valid-percent", "1.5"), 2, "--valid-percent"),
    ("mm-raw-valid-percent-nan", "make_manifest",
     lambda c: _mm(c, "raw", "--valid-percent", "nan"), 2, "--valid-percent"),
    ("mm-raw-dest-is-a-file", "make_manifest", lambda c: _mm(c, "raw", dest="a_file"), 2,
     "a_file"),
    ("mm-raw-dest-under-a-file", "make_manifest", lambda c: _mm(c, "raw", dest="a_file/x"), 2,
     "a_file"),
    ("mm-bids-nan-lfreq", "make_manifest", lambda c: _mm(c, "bids", "--l-freq", "nan"), 2,
     "--l-freq"),
    ("mm-bids-dest-is-a-file", "make_manifest", lambda c: _mm(c, "bids", dest="a_file"), 2,
     "a_file"),
    ("mm-libribrain-zero-segment", "make_manifest",
     lambda c: _mm(c, "libribrain", "--segment-seconds", "0"), 2, "--segment-seconds"),
    ("mm-libribrain-nan-clip", "make_manifest", lambda c: _mm(c, "libribrain", "--clip", "nan"),
     2, "--clip"),
    ("mm-libribrain-inf-chunk", "make_manifest",
     lambda c: _mm(c, "libribrain", "--chunk-seconds", "inf"), 2, "--chunk-seconds"),
    ("mm-libribrain-dest-is-a-file", "make_manifest",
     lambda c: _mm(c, "libribrain", dest="a_file"), 2, "a_file"),
    # make_demo_data
    ("demo-zero-segments", "make_demo_data", lambda c: _demo(c, "--seconds", "1"), 2,
     "no segment would be written"),
    ("demo-nan-seconds", "make_demo_data", lambda c: _demo(c, "--seconds", "nan"), 2,
     "--seconds"),
    ("demo-inf-sfreq", "make_demo_data", lambda c: _demo(c, "--sfreq", "inf"), 2, "--sfreq"),
    ("demo-zero-recordings", "make_demo_data", lambda c: _demo(c, "--recordings", "0"), 2,
     "--recordings"),
    ("demo-negative-channels", "make_demo_data", lambda c: _demo(c, "--channels", "-3"), 2,
     "--channels"),
    ("demo-all-valid", "make_demo_data", lambda c: _demo(c, "--valid-recordings", "2"), 2,
     "--valid-recordings"),
    ("demo-dest-is-a-file", "make_demo_data", lambda c: _demo(c, dest="a_file"), 2, "a_file"),
    ("demo-dest-under-a-file", "make_demo_data", lambda c: _demo(c, dest="a_file/x"), 2,
     "a_file"),
    # extract_features
    ("extract-dest-is-a-file", "extract_features",
     lambda c: _extract(c, c["short"] / "valid.tsv", "a_file"), 2, "--dest"),
    ("extract-dest-under-a-file", "extract_features",
     lambda c: _extract(c, c["short"] / "valid.tsv", "a_file/x"), 2, "a_file"),
    ("extract-bad-layer", "extract_features",
     lambda c: _extract(c, c["short"] / "valid.tsv", "feat", "--layer", "top"), 2, "--layer"),
    ("extract-layer-join-empty", "extract_features",
     lambda c: _extract(c, c["short"] / "valid.tsv", "feat", "--layer", "cnn+"), 2,
     "--layer: must be depths joined by '+'"),
    ("extract-short-segment", "extract_features", lambda c: _extract(c, c["short"] / "valid.tsv"),
     1, "valid-001.npy): 40 samples, shorter than the model's receptive field of 60"),
    ("extract-absurd-values", "extract_features", lambda c: _extract(c, c["absurd"] / "valid.tsv"),
     1, "valid.tsv, line 3"),
    ("extract-checkpoint-fifo", "extract_features",
     lambda c: ["--checkpoint", str(c["fifo"]), "--manifest", str(c["short"] / "valid.tsv"),
                "--dest", str(c["root"] / "feat")], 1, "fifo: checkpoint is a FIFO"),
    ("extract-checkpoint-missing", "extract_features",
     lambda c: ["--checkpoint", str(c["root"] / "no.pt"), "--manifest",
                str(c["short"] / "valid.tsv"), "--dest", str(c["root"] / "feat")], 1,
     "no.pt: checkpoint does not exist"),
    ("extract-manifest-fifo", "extract_features", lambda c: _extract(c, c["fifo"]), 1,
     "fifo: manifest is a FIFO"),
    ("extract-manifest-is-a-dir", "extract_features", lambda c: _extract(c, c["root"]), 1,
     "manifest is a directory"),
    # probe: impossible options (exit 2, before any work)
    ("probe-train-fraction-0", "probe", lambda c: _probe(c, "--train-fraction", "0"), 2,
     "--train-fraction"),
    ("probe-train-fraction-1.5", "probe", lambda c: _probe(c, "--train-fraction", "1.5"), 2,
     "--train-fraction"),
    ("probe-nan-context", "probe", lambda c: _probe(c, "--context", "nan"), 2, "--context"),
    ("probe-zero-sample-rate", "probe", lambda c: _probe(c, "--sample-rate", "0"), 2,
     "--sample-rate"),
    ("probe-zero-max-windows", "probe", lambda c: _probe(c, "--max-windows", "0"), 2,
     "--max-windows"),
    ("probe-tmax-before-tmin", "probe", lambda c: _probe(c, "--tmin", "1", "--tmax", "0.5"), 2,
     "--tmax"),
    ("probe-negative-C", "probe", lambda c: _probe(c, "--C", "-1"), 2, "--C"),
    ("probe-json-under-a-file", "probe", lambda c: _probe(c, "--json", str(c["file"] / "r.json")),
     2, "--json"),
    ("probe-json-is-a-dir", "probe", lambda c: _probe(c, "--json", str(c["root"])), 2, "--json"),
    ("probe-plot-under-a-file", "probe", lambda c: _probe(c, "--plot", str(c["file"] / "p.png")),
     2, "--plot"),
    ("probe-plot-unknown-format", "probe", lambda c: _probe(c, "--plot", str(c["root"] / "p.xyz")),
     2, "unknown plot format 'xyz'"),
    ("probe-bad-layer", "probe", lambda c: _probe(c, "--layer", "top"), 2, "--layer"),
    ("probe-layer-named-twice", "probe", lambda c: _probe(c, "--layer", "cnn+cnn"), 2,
     "--layer 'cnn+cnn' names a depth twice"),
    # probe: bad data (exit 1, naming the file and row)
    ("probe-labels-fifo", "probe", lambda c: _probe(c, labels=c["fifo"]), 1,
     "labels file is a FIFO"),
    ("probe-labels-missing", "probe", lambda c: _probe(c, labels=c["root"] / "none.tsv"), 1,
     "none.tsv: labels file does not exist"),
    ("probe-labels-short-row", "probe",
     lambda c: _probe_row(c, "short.tsv", f"{c['segs'][0]}\t0.0\t0.5"), 1,
     "short.tsv, line 3: 3 tab-separated field(s), the header has 5"),
    ("probe-labels-ragged-row", "probe",
     lambda c: _probe_row(c, "long.tsv", f"{c['segs'][0]}\t0\t1\ta\ttrain\tx"),
     1, "long.tsv, line 3: 6 tab-separated field(s)"),
    ("probe-labels-nan-time", "probe",
     lambda c: _probe_row(c, "nan.tsv", f"{c['segs'][0]}\tnan\t1\ta\ttrain"),
     1, "nan.tsv, line 3: start/end must be finite"),
    ("probe-labels-inf-time", "probe",
     lambda c: _probe_row(c, "inf.tsv", f"{c['segs'][0]}\t0\tinf\ta\ttrain"),
     1, "inf.tsv, line 3: start/end must be finite"),
    ("probe-overlap", "probe",
     lambda c: _probe_row(c, "leak.tsv", f"{c['segs'][0]}\t0.25\t0.75\ta\ttest"),
     1, "leak.tsv, lines 2 (train) and 3 (test)"),
    ("probe-class-only-in-test", "probe",
     lambda c: _probe_row(c, "unseen.tsv", f"{c['segs'][5]}\t2\t3\tzz\ttest"),
     1, "class 'zz' has 1 test window(s) but none in the training split"),
    ("probe-manifest-fifo", "probe",
     lambda c: ["--manifest", str(c["fifo"]), "--labels", str(c["labels"]), "--raw"], 1,
     "manifest is a FIFO"),
]


def _check(status, out, err, expected_status, culprit):
    text = out + err
    assert "Traceback" not in text, text[-3000:]
    assert status == expected_status, text[-3000:]
    errors = [line for line in text.splitlines() if ERROR_LINE.match(line)]
    assert len(errors) == 1, text[-3000:]
    assert not ARGPARSE_ERROR.search(text), text[-3000:]
    assert culprit in errors[0], errors[0]


@pytest.mark.parametrize("case_id, tool, argv, status, culprit", CASES,
                         ids=[case[0] for case in CASES])
def test_bad_input_in_process(tools, ctx, capsys, case_id, tool, argv, status, culprit):
    try:
        code = tools[tool].main(argv(ctx))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    _check(code, captured.out, captured.err, status, culprit)


@pytest.mark.parametrize("case_id", ["mm-raw-empty-pattern", "demo-zero-segments",
                                     "extract-short-segment", "probe-train-fraction-1.5"])
def test_bad_input_real_command_line(ctx, case_id):
    _, tool, argv, status, culprit = next(case for case in CASES if case[0] == case_id)
    result = run_command([str(VENV_BIN / "python"), f"tools/{tool}.py", *argv(ctx)])
    _check(result.returncode, result.stdout, result.stderr, status, culprit)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_dest_is_a_usage_error(tools, ctx, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(SystemExit) as exit_:
            tools["make_demo_data"].main(_demo(ctx, dest=str(locked / "out")))
        captured = capsys.readouterr()
        _check(exit_.value.code, captured.out, captured.err, 2, "is not writable")
    finally:
        locked.chmod(0o700)


def test_duplicate_manifest_rows_warn(ctx):
    result = run_command([str(VENV_BIN / "python"), "tools/extract_features.py",
                          *_extract(ctx, ctx["dup"] / "valid.tsv", "dupf")])
    err = result.stderr
    assert result.returncode == 0, err[-2000:]
    assert "valid.tsv, line 3: valid-000.npy is listed again (first at line 2)" in err


def test_demo_data_without_valid_recordings_says_how_to_train(tools, ctx, capsys):
    rc = tools["make_demo_data"].main(_demo(ctx, "--valid-recordings", "0", dest="novalid"))
    assert rc == 0
    assert "dataset.disable_validation=true" in capsys.readouterr().out


def test_ctrl_c_prints_one_line_and_exits_130(ctx, tmp_path):
    dest = tmp_path / "big"
    environment = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    process = subprocess.Popen(
        [sys.executable, "tools/make_demo_data.py", "--dest", str(dest), "--recordings", "200",
         "--seconds", "60", "--channels", "16"],
        cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a harness started in the background ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (dest / "segments").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # interrupt during the work, not during the imports
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == "interrupted"


# ---------------------------------------------------------------------------------------------
# fairseq's own commands with the plugin: bad data ends with one error line naming the file
# ---------------------------------------------------------------------------------------------


def _data_dir(tmp_path, train, valid=None):
    data = tmp_path / "data"
    write_manifest(data, train, split="train")
    write_manifest(data, valid if valid is not None else random_segments(1, samples=600, seed=1),
                   split="valid")
    return data


@pytest.mark.slow
def test_absurd_segment_stops_training_naming_file_and_row(tmp_path):
    segments = random_segments(4, samples=600)
    segments[2][:] = 1e30  # finite: passes the NaN/inf check, overflows the gradients
    data = _data_dir(tmp_path, segments)
    result = run_command(train_command(data, tmp_path / "ck", 5, "task.max_sample_size=null",
                                       "task.min_sample_size=0"))
    _check(result.returncode, result.stdout, result.stderr, 1,
           f"{data / 'train.tsv'}, line 4 ({data / 'train-002.npy'}): 183600 values beyond "
           "+-1000")
    log = result.stdout + result.stderr
    assert "FloatingPointError" not in log
    assert not any(np.isnan(r.get("loss", 0.0)) for r in parse_fairseq_log(log, "train_inner"))


@pytest.mark.slow
def test_empty_valid_manifest_says_how_to_train_without_validation(tmp_path):
    data = _data_dir(tmp_path, random_segments(2, samples=600))
    (data / "valid.tsv").write_text(f"{data}\n")  # what make_manifest --valid-percent 0 writes
    base = train_command(data, tmp_path / "ck", 1, "task.max_sample_size=null",
                         "task.min_sample_size=0")
    result = run_command(base)
    _check(result.returncode, result.stdout, result.stderr, 1,
           "valid.tsv: empty manifest (no segment rows); to train without a validation set "
           "pass dataset.disable_validation=true")
    result = run_command([*base, "dataset.disable_validation=true"])
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_fairseq_commands_name_the_bad_segment(ctx, tmp_path):
    data = _data_dir(tmp_path, random_segments(2, samples=600),
                     valid=random_segments(3, samples=600))
    os.remove(data / "valid-001.npy")
    os.mkfifo(data / "valid-001.npy")
    validate = ["fairseq-validate", str(data), "--user-dir", "meg2vec_fairseq", "--task",
                "meg_pretraining", "--path", str(ctx["ckpt"]), "--valid-subset", "valid",
                "--max-tokens", "10000"]
    result = run_command(validate)
    _check(result.returncode, result.stdout, result.stderr, 1,
           f"valid.tsv, line 3: {data / 'valid-001.npy'}: file is a FIFO")
    # NaN found only when the crop is read (in a DataLoader worker): still one line
    (data / "valid-001.npy").unlink()
    bad = random_segments(1, samples=600)[0]
    bad[3, 7] = np.nan
    np.save(data / "valid-001.npy", bad)
    result = run_command([*validate, "--num-workers", "1"])
    _check(result.returncode, result.stdout, result.stderr, 1,
           f"valid.tsv, line 3 ({data / 'valid-001.npy'}): 1 NaN/inf values")
