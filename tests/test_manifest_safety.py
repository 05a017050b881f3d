"""``tools/make_manifest.py`` must never lose user files or leave outputs that lie.

Each test runs the real command line in a subprocess, as a user would:

* a folder under ``--segments-dir`` that the tool did not create is never deleted,
  and user files inside the tool's own folders survive a re-run;
* an interrupted re-run with other options leaves no manifest describing missing or
  changed segments;
* two runs cannot write the same ``--dest`` (or ``--segments-dir``) at once, and a killed
  run does not leave the lock stuck;
* Ctrl-C ends with one line and exit code 130 (``--jobs 1`` and ``--jobs 2``);
* an unusable output path is an ``error:`` line and exit code 2 before any work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from meg2vec_fairseq import errors  # noqa: E402
from meg2vec_fairseq.preprocessing import (  # noqa: E402
    ownership,
)

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "make_manifest.py"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
INTERRUPTED = "interrupted; re-run the same command to resume"


def make_fif(path: Path, seconds: float, n_per_type: int = 4, seed: int = 0,
             sfreq: float = 1000.0) -> Path:
    """A small generated recording: ``n_per_type`` magnetometers and gradiometers."""
    import mne

    rng = np.random.default_rng(seed)
    n = int(round(seconds * sfreq))
    names = [f"MAG{i:03d}" for i in range(n_per_type)] + [f"GRD{i:03d}" for i in range(n_per_type)]
    types = ["mag"] * n_per_type + ["grad"] * n_per_type
    x = rng.standard_normal((len(names), n)) * 1e-12
    raw = mne.io.RawArray(x, mne.create_info(names, sfreq, types), verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.save(path, overwrite=True, verbose=False)
    return path


def tool_cmd(inputs: Path, dest: Path, *extra: str) -> list[str]:
    return [sys.executable, str(TOOL), "raw", str(inputs), "--dest", str(dest),
            "--no-progress", "--no-qc", *extra]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]


def assert_no_traceback(out: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr


def manifest_problems(dest: Path) -> list[str]:
    """Rows of ``dest/*.tsv`` whose file is missing or has another length than stated."""
    problems = []
    for tsv in sorted(dest.glob("*.tsv")):
        lines = tsv.read_text().splitlines()
        root = Path(lines[0])
        for line in lines[1:]:
            rel, n = line.split("\t")
            path = root / rel
            if not path.is_file():
                problems.append(f"{tsv.name}: {rel} missing")
            elif np.load(path, mmap_mode="r").shape[1] != int(n):
                problems.append(f"{tsv.name}: {rel} has {np.load(path, mmap_mode='r').shape[1]}"
                                f" samples, manifest says {n}")
    return problems


def default_sigint() -> None:
    """``preexec_fn``: SIGINT handled as a terminal's Ctrl-C would be (not inherited SIG_IGN)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll ``predicate`` every 5 ms while ``proc`` runs; True once it holds."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """Three 40-s recordings (8 channels): long enough to interrupt a run mid-way."""
    root = tmp_path_factory.mktemp("in")
    for i in range(3):
        make_fif(root / f"rec{i}_raw.fif", seconds=40, seed=i)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """One 4-s recording: a run over it takes a few seconds."""
    root = tmp_path_factory.mktemp("small")
    make_fif(root / "a_raw.fif", seconds=4)
    return root


# ------------------------------------------------------- 1: --segments-dir ownership
def test_segments_dir_never_deletes_user_folders_or_files(tmp_path, small):
    segdir = tmp_path / "my_data"
    # A user's own folder that happens to carry a recording's id.
    user_folder = segdir / "a_raw"
    user_folder.mkdir(parents=True)
    (user_folder / "notes.txt").write_text("mine")
    (user_folder / "000000.npy").write_bytes(b"not a segment of the tool")
    cmd = tool_cmd(small, tmp_path / "out", "--segments-dir", str(segdir),
                   "--segment-seconds", "1", "--n-channels", "8", "--valid-percent", "0")
    out = run(cmd)
    assert_no_traceback(out)
    assert out.returncode == 1, out.stdout + out.stderr  # that recording failed
    assert f"refusing to delete {user_folder}: not created by make_manifest" in out.stdout
    assert (user_folder / "notes.txt").read_text() == "mine"
    assert (user_folder / "000000.npy").read_bytes() == b"not a segment of the tool"
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["recordings"][0]["status"] == "failed"
    assert "refusing to delete" in rep["recordings"][0]["reason"]
    assert manifest_problems(tmp_path / "out") == []

    # The tool's own folder: a user file put inside survives a re-run that clears it.
    user_folder.rename(tmp_path / "moved_away")
    assert run(cmd).returncode == 0
    own = segdir / "a_raw"
    assert sorted(p.name for p in own.iterdir())[:1] == ["000000.npy"]
    (own / "my_annotations.csv").write_text("keep me")
    out = run(cmd + ["--overwrite"])
    assert_no_traceback(out)
    assert out.returncode == 1
    assert f"refusing to clear {own}" in out.stdout and "my_annotations.csv" in out.stdout
    assert (own / "my_annotations.csv").read_text() == "keep me"
    assert (own / "000003.npy").is_file()  # nothing of it was deleted either
    (own / "my_annotations.csv").unlink()
    out = run(cmd + ["--overwrite"])
    assert out.returncode == 0 and "1 ok" in out.stdout
    assert manifest_problems(tmp_path / "out") == []



def test_libribrain_overwrite_never_deletes_user_folders(tmp_path):
    """``libribrain --overwrite`` forgets only the tool's own work on the selected runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from libribrain_fake import FIRST_TRAIN_KEY, OTHER_TRAIN_KEY, make_fake_libribrain

    from meg2vec_fairseq.preprocessing.libribrain import run_key_name

    data = tmp_path / "libribrain"
    make_fake_libribrain(str(data), seconds=3.0)
    segdir = tmp_path / "my_data"
    # A user's own folder that happens to carry a selected run's id.
    user_folder = segdir / run_key_name(OTHER_TRAIN_KEY)
    user_folder.mkdir(parents=True)
    (user_folder / "notes.txt").write_text("mine")
    (user_folder / "000000.npy").write_bytes(b"not a segment of the tool")
    cmd = [sys.executable, str(TOOL), "libribrain", str(data), "--dest", str(tmp_path / "out"),
           "--segments-dir", str(segdir), "--train-run-keys", ",".join(FIRST_TRAIN_KEY),
           ",".join(OTHER_TRAIN_KEY), "--segment-seconds", "1", "--no-progress", "--no-qc",
           "--overwrite"]
    out = run(cmd)
    assert_no_traceback(out)
    assert out.returncode == 1, out.stdout + out.stderr  # that run failed, the others not
    assert f"refusing to delete {user_folder}: not created by make_manifest" in out.stdout
    assert (user_folder / "notes.txt").read_text() == "mine"
    assert (user_folder / "000000.npy").read_bytes() == b"not a segment of the tool"
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    status = {r["recording_id"]: r["status"] for r in rep["recordings"]}
    assert status.pop(user_folder.name) == "failed"
    assert set(status.values()) == {"ok"}
    assert manifest_problems(tmp_path / "out") == []

    # The tool's own folder: --overwrite clears its segments, never a user file inside.
    own = segdir / run_key_name(FIRST_TRAIN_KEY)
    (own / "my_annotations.csv").write_text("keep me")
    out = run(cmd)
    assert_no_traceback(out)
    assert out.returncode == 1
    assert f"refusing to clear {own}" in out.stdout and "my_annotations.csv" in out.stdout
    assert (own / "my_annotations.csv").read_text() == "keep me"
    assert (user_folder / "notes.txt").read_text() == "mine"
    assert manifest_problems(tmp_path / "out") == []

# -------------------------------------------- 4: no stale manifest after interruption
def test_interrupted_rerun_with_other_options_leaves_no_stale_manifest(tmp_path, recordings):
    dest = tmp_path / "out"
    base = tool_cmd(recordings, dest, "--n-channels", "8", "--chunk-seconds", "2")
    assert run(base + ["--segment-seconds", "1"]).returncode == 0
    assert (dest / "train.tsv").is_file() and manifest_problems(dest) == []

    rerun = base + ["--segment-seconds", "0.5"]  # 125 instead of 250 samples
    proc = subprocess.Popen(rerun, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV)

    def first_new_segment() -> bool:
        try:
            return np.load(dest / "segments" / "rec0_raw" / "000000.npy",
                           mmap_mode="r").shape[1] == 125
        except (OSError, ValueError):
            return False

    caught = wait_for(first_new_segment, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert caught, "the re-run finished before its first new segment could be seen"
    assert manifest_problems(dest) == []
    assert not (dest / "train.tsv").exists() and not (dest / "report.json").exists()

    out = run(rerun)  # the same command completes it
    assert out.returncode == 0, out.stdout + out.stderr
    assert manifest_problems(dest) == []
    rows = (dest / "train.tsv").read_text().splitlines()[1:]
    assert rows and all(r.endswith("\t125") for r in rows)


# ----------------------------------------------------------------- 5: lock on --dest
HOLDER = textwrap.dedent("""
    import sys, time
    from meg2vec_fairseq.preprocessing import ownership
    lock = ownership.lock_outputs(sys.argv[1], sys.argv[2], command="holder-of-the-lock")
    print("locked", flush=True)
    time.sleep(600)
""")


def start_holder(dest: Path, segdir: Path) -> subprocess.Popen:
    """A process holding the lock on ``dest`` and ``segdir`` (via the library) until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(dest),
                             str(segdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    if line.strip() != "locked":
        proc.kill()
        raise AssertionError(f"holder did not take the lock: {line}{proc.stderr.read()}")
    return proc


def assert_refused(out: subprocess.CompletedProcess, holder: subprocess.Popen,
                   folder: Path) -> None:
    assert_no_traceback(out)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = error_lines(out)
    assert len(lines) == 1, out.stderr
    assert str(folder) in lines[0] and f"pid {holder.pid}" in lines[0]
    assert "holder-of-the-lock" in lines[0] and "started" in lines[0]


def test_second_run_into_same_dest_refused_until_holder_dies(tmp_path, small):
    dest = tmp_path / "out"
    cmd = tool_cmd(small, dest, "--segment-seconds", "1", "--n-channels", "8")
    holder = start_holder(dest, dest / "segments")
    try:
        out = run(cmd)
        assert_refused(out, holder, dest)
        assert not (dest / "train.tsv").exists() and not (dest / "segments" / "a_raw").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    out = run(cmd + ["--jobs", "2"])  # a killed holder leaves nothing stuck
    assert out.returncode == 0, out.stdout + out.stderr
    assert manifest_problems(dest) == [] and (dest / "train.tsv").is_file()


def test_lock_covers_segments_dir_outside_dest(tmp_path, small):
    shared = tmp_path / "shared_segments"
    # The holder writes to dest A with segments in `shared`; another run to dest B with
    # --segments-dir shared would wipe its segments.
    holder = start_holder(tmp_path / "A", shared)
    try:
        out = run(tool_cmd(small, tmp_path / "B", "--segments-dir", str(shared)))
        assert_refused(out, holder, shared)
    finally:
        holder.kill()
        holder.wait()
    # Default layout: segments inside the holder's dest, used by another dest.
    holder = start_holder(tmp_path / "C", tmp_path / "C" / "segments")
    try:
        out = run(tool_cmd(small, tmp_path / "D", "--segments-dir",
                           str(tmp_path / "C" / "segments")))
        assert_refused(out, holder, tmp_path / "C" / "segments")
    finally:
        holder.kill()
        holder.wait()


def test_two_real_runs_at_once(tmp_path, recordings):
    dest = tmp_path / "out"
    cmd = tool_cmd(recordings, dest, "--n-channels", "8", "--segment-seconds", "0.5",
                   "--chunk-seconds", "2")
    first = subprocess.Popen(cmd + ["--jobs", "2"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV,
                             start_new_session=True)
    started = wait_for(lambda: any((dest / "segments").glob("*/000001.npy")), first)
    # Freeze the first run mid-way (workers too), so that the second surely meets it.
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        second = run(cmd)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert started, "the first run finished before the second could start"
    assert second.returncode == 1 and len(error_lines(second)) == 1, second.stderr
    assert f"pid {first.pid}" in error_lines(second)[0] and "raw" in error_lines(second)[0]
    assert first.returncode == 0, stdout + stderr
    assert manifest_problems(dest) == []


# -------------------------------------------------------------------------- 6: Ctrl-C
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_one_line_exit_130_then_resume(tmp_path, recordings, jobs):
    dest = tmp_path / "out"
    cmd = tool_cmd(recordings, dest, "--n-channels", "8", "--segment-seconds", "0.5",
                   "--chunk-seconds", "2", "--jobs", jobs)
    # A terminal's Ctrl-C signals the whole foreground process group, workers included.
    # SIGINT back to its default in the child: a harness started in the background (`cmd &`)
    # ignores SIGINT, and an ignored signal is inherited, so Python would never see the Ctrl-C.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True, preexec_fn=default_sigint)
    started = wait_for(lambda: any((dest / "segments").glob("*/000001.npy")), proc)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert started, "the run finished before it could be interrupted"
    out = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert_no_traceback(out)
    assert proc.returncode == 130, stdout + stderr
    assert stderr.strip().splitlines()[-1] == INTERRUPTED
    assert stderr.count(INTERRUPTED) == 1
    assert manifest_problems(dest) == []
    out = run(cmd)  # no worker left holding the lock; the same command resumes
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 recording(s)" in out.stdout and manifest_problems(dest) == []


# ------------------------------------------------------------- unusable output paths
def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes anywhere on a normal filesystem
        return Path("/sys/meg2vec_manifest_test")  # mkdir: EPERM even for root
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o500)
    return ro / "out"


@pytest.mark.parametrize("case", ["dest_is_file", "segments_dir_is_file", "parent_is_file",
                                  "dest_not_writable"])
def test_unusable_output_path_exit_2(tmp_path, small, case):
    a_file = tmp_path / "a_file"
    a_file.write_text("user data")
    dest, extra, named = tmp_path / "out", [], None
    if case == "dest_is_file":
        dest = named = a_file
    elif case == "segments_dir_is_file":
        extra, named = ["--segments-dir", str(a_file)], a_file
    elif case == "parent_is_file":
        dest = named = a_file / "out"
    else:
        dest = named = _unwritable(tmp_path)
    out = run(tool_cmd(small, dest, *extra))
    assert_no_traceback(out)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = error_lines(out)
    assert len(lines) == 1 and str(named) in lines[0], out.stderr
    assert a_file.read_text() == "user data"
    assert not (tmp_path / "out").exists()  # checked before any work


def test_library_lock_refuses_second_holder_and_releases(tmp_path):
    """Library level: a second lock in the same process is refused; release frees it."""
    with ownership.lock_outputs(tmp_path / "d", tmp_path / "s", command="first"):
        with pytest.raises(errors.OutputLockedError, match=f"pid {os.getpid()}.*first"):
            ownership.lock_outputs(tmp_path / "e", tmp_path / "s", command="second")
    ownership.lock_outputs(tmp_path / "e", tmp_path / "s", command="second").release()
