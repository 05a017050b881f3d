"""Tests for ``tools/make_manifest.py raw|bids`` and the shared segment machinery.

Generated recordings are written to ``tmp_path`` with :class:`mne.io.RawArray`; the real
recordings are read from ``../shared/real_meg`` (skipped when absent).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from meg_fixtures import ToolRun

from meg2vec_fairseq import errors  # noqa: E402
from meg2vec_fairseq.io.atomic import atomic_save_npy
from meg2vec_fairseq.preprocessing import (  # noqa: E402
    dsp,
    manifests,  # noqa: E402
    ownership,
    pipeline,
    recordings,
    results,
    segmenter,
)
from meg2vec_fairseq.preprocessing.ownership import (
    load_done_marker,
    prepare_recording_dir,
    write_done_marker,
)
from meg2vec_fairseq.preprocessing.params import PreprocessParams  # noqa: E402
from meg2vec_fairseq.preprocessing.report import write_manifests
from meg2vec_fairseq.preprocessing.results import (
    RecordingResult,
    make_recording_ids,
    params_fingerprint,
)
from meg2vec_fairseq.preprocessing.segmenter import Segmenter, write_segments
from meg2vec_fairseq.preprocessing.splits import assign_splits

REPO = Path(__file__).resolve().parents[1]
REAL_MEG = REPO / ".." / "shared" / "real_meg"
TOOL = REPO / "tools" / "make_manifest.py"


# ------------------------------------------------------------------ segments.py (shared)
def test_atomic_save_npy_leaves_no_temp_and_roundtrips(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_save_npy(tmp_path / "a.npy", x)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), x)


def test_atomic_save_npy_failure_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):  # object arrays are refused (allow_pickle=False)
        atomic_save_npy(tmp_path / "b.npy", np.array([object()], dtype=object))
    assert list(tmp_path.iterdir()) == []


def test_segmenter_streams_drops_and_counts():
    L = 10
    x = np.arange(3 * 95, dtype=np.float64).reshape(3, 95)
    x[1, 72] = np.nan  # inside segment 7
    segmenter = Segmenter(L, bad_spans={"bad_annotation": [(25, 31)]})  # segments 2, 3
    chunks = [x[:, i:i + 7] for i in range(0, 95, 7)]  # borders never align with L
    out = list(segmenter.segments(chunks))
    assert [s.index for s in out] == [0, 1, 4, 5, 6, 8]
    for s in out:
        np.testing.assert_array_equal(s.data, x[:, s.start:s.start + L])
    assert segmenter.dropped == {"bad_annotation": 2, "nan": 1}
    assert segmenter.tail_samples == 5 and segmenter.written == 6


def test_done_marker_roundtrip_and_invalidation(tmp_path):
    root = tmp_path / "segments"
    rec = prepare_recording_dir(root, "rec")
    (rec / "000000.npy").write_bytes(b"partial")  # leftovers of an interrupted run
    (rec / ".000001.npy.123.tmp").write_bytes(b"partial")
    rec = prepare_recording_dir(root, "rec")  # wipes them; only the owner marker stays
    assert [p.name for p in rec.iterdir()] == [ownership.OWNER_MARKER]
    (rec / "junk.npy").write_bytes(b"user data")  # not the tool's: never deleted
    with pytest.raises(errors.ForeignDirectoryError, match="junk.npy"):
        prepare_recording_dir(root, "rec")
    assert (rec / "junk.npy").read_bytes() == b"user data"
    (rec / "junk.npy").unlink()
    segmenter = Segmenter(4)
    rows = write_segments(segmenter.segments([np.ones((2, 9))]), root, "rec", "float16")
    assert rows == [["rec/000000.npy", 4], ["rec/000001.npy", 4]]
    assert np.load(root / "rec/000001.npy").dtype == np.float16
    res = RecordingResult("rec", "x.fif", segments=rows, segments_written=2)
    fp = params_fingerprint({"sfreq": 250})
    assert load_done_marker(root, "rec", fp) is None
    write_done_marker(root, res, fp)
    again = load_done_marker(root, "rec", fp)
    assert again.status == "skipped" and again.segments == rows
    assert load_done_marker(root, "rec", params_fingerprint({"sfreq": 200})) is None
    (root / "rec/000001.npy").unlink()
    assert load_done_marker(root, "rec", fp) is None


def _result(rid, n):
    return RecordingResult(rid, rid, segments=[[f"{rid}/{i:06d}.npy", 5] for i in range(n)])


def test_assign_splits_by_recording_deterministic():
    results = [_result(f"r{i:02d}", 3) for i in range(20)]
    results.append(RecordingResult.failed("bad", "bad", "no MEG channels"))
    a = assign_splits(results, 0.2, seed=1)
    b = assign_splits(list(reversed(results)), 0.2, seed=1)
    c = assign_splits(results, 0.2, seed=2)
    assert a == b and a != c
    recs = {k: {rel.split("/")[0] for rel, _ in v} for k, v in a.items()}
    assert len(recs["valid"]) == 4 and len(recs["train"]) == 16
    assert not recs["valid"] & recs["train"]
    assert "bad" not in recs["train"] | recs["valid"]


def test_assign_splits_single_recording_last_part_valid():
    s = assign_splits([_result("only", 10)], 0.25, seed=0)
    assert [r[0] for r in s["valid"]] == [f"only/{i:06d}.npy" for i in (7, 8, 9)]
    assert len(s["train"]) == 7


def test_write_manifests_format(tmp_path):
    root = tmp_path / "segments"
    root.mkdir()
    paths = write_manifests(tmp_path, root, {"train": [["a/000000.npy", 1250]], "valid": []})
    lines = paths["train"].read_text().splitlines()
    assert lines == [str(root.resolve()), "a/000000.npy\t1250"]
    assert paths["valid"].read_text() == str(root.resolve()) + "\n"


def test_recording_ids_unique_and_safe(tmp_path):
    a, b = tmp_path / "x" / "run 1_raw.fif", tmp_path / "y" / "run 1_raw.fif"
    ids = make_recording_ids([(a, a.parent), (b, b.parent), (a, tmp_path)])
    assert ids[2] == "x__run_1_raw"
    assert ids[0] != ids[1] and ids[0].startswith("run_1_raw-")


def _fail_or_echo(task):
    if task.options.get("fail"):
        raise ValueError(f"{task.source}: broken")
    return RecordingResult(task.recording_id, task.source, segments_written=1)


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_recordings_isolates_failures(jobs):
    tasks = [results.RecordingTask(f"r{i}", f"s{i}", {"fail": i == 1}) for i in range(3)]
    out = pipeline.run_recordings(_fail_or_echo, tasks, jobs=jobs, progress=False)
    assert [r.status for r in out] == ["ok", "failed", "ok"]
    assert "s1: broken" in out[1].reason


# ------------------------------------------------------------------------ helpers
def _load_tool():
    return ToolRun("make_manifest")


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


def make_fif(path, seconds=6.0, sfreq=1000.0, n_mag=102, n_grad=204, seed=0,
             sines=((10.0, 1.0), (25.0, 1.0)), noise=0.1, bads=(), flat=(), eeg_only=False,
             annotations=(), nan_at=None, first_samp=0, meas_date=None):
    """Write a generated recording: per channel a sine mixture + white noise."""
    import mne

    rng = np.random.default_rng(seed)
    n = int(round(seconds * sfreq))
    t = np.arange(n) / sfreq
    if eeg_only:
        names, types = [f"EEG{i:03d}" for i in range(8)], ["eeg"] * 8
    else:
        names = [f"MAG{i:03d}" for i in range(n_mag)] + [f"GRD{i:03d}" for i in range(n_grad)]
        types = ["mag"] * n_mag + ["grad"] * n_grad
    x = noise * rng.standard_normal((len(names), n))
    for f, a in sines:
        x += a * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, (len(names), 1)))
    x += rng.standard_normal((len(names), 1)) * 5  # DC offsets
    scale = np.array([1e-12 if k == "mag" else 1e-11 if k == "grad" else 1e-5 for k in types])
    x *= scale[:, None]
    for i in flat:
        x[i] = 3e-12  # constant: flat
    if nan_at is not None:
        x[1, int(nan_at * sfreq):int(nan_at * sfreq) + 5] = np.nan
    info = mne.create_info(names, sfreq, types)
    info["bads"] = [names[i] for i in bads]
    raw = mne.io.RawArray(x, info, first_samp=first_samp, verbose=False)
    if meas_date is not None:
        raw.set_meas_date(meas_date)
    if annotations:
        onsets = [o + (raw.first_time if meas_date is not None else 0) for o, _, _ in annotations]
        raw.set_annotations(mne.Annotations(onsets, [d for _, d, _ in annotations],
                                            [k for _, _, k in annotations],
                                            orig_time=raw.info["meas_date"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.save(path, overwrite=True, verbose=False)
    return path


def read_tsv(path):
    lines = Path(path).read_text().splitlines()
    return lines[0], [(rel, int(n)) for rel, n in (ln.split("\t") for ln in lines[1:])]


def load_recording(dest, rec_id, split="train"):
    """Concatenate one recording's segments from the manifests, in time order."""
    rows = []
    for name in ("train", "valid"):
        root, r = read_tsv(Path(dest) / f"{name}.tsv")
        rows += [(Path(root) / rel) for rel, _ in r if rel.startswith(rec_id + "/")]
    rows.sort()
    return np.concatenate([np.load(p) for p in rows], axis=1)


def report(dest):
    rep = json.loads((Path(dest) / "report.json").read_text())
    return {r["recording_id"]: r for r in rep["recordings"]}


def lockin_amplitude(x, f, sfreq):
    t = np.arange(x.shape[-1]) / sfreq
    return 2 * np.abs(np.mean(x * np.exp(-2j * np.pi * f * t), axis=-1))


# ------------------------------------------------------------ generated recordings
def test_generated_recording_shapes_rate_band_and_zscore(tmp_path, tool):
    """306-ch 1 kHz sine mixture -> (306, 250) float32 segments at 250 Hz; band 1-40 kept."""
    sines = ((0.25, 1.0), (10.0, 1.0), (25.0, 1.0), (80.0, 1.0), (235.0, 1.0), (300.0, 1.0))
    src = make_fif(tmp_path / "in" / "gen_raw.fif", seconds=20, sines=sines, noise=0.01)
    dest = tmp_path / "out"
    rc = tool.main(["raw", str(src), "--dest", str(dest), "--segment-seconds", "1",
                    "--valid-percent", "0.1", "--no-progress"])
    assert rc == 0
    root, train = read_tsv(dest / "train.tsv")
    _, valid = read_tsv(dest / "valid.tsv")
    assert root == str((dest / "segments").resolve())
    assert len(train) == 18 and len(valid) == 2  # single recording: last 10 % in time
    assert max(r for r, _ in train) < min(r for r, _ in valid)
    assert all(n == 250 for _, n in train + valid)
    seg0 = np.load(Path(root) / train[0][0])
    assert seg0.shape == (306, 250) and seg0.dtype == np.float32
    entry = report(dest)["gen_raw"]
    assert entry["status"] == "ok" and entry["sfreq_out"] == 250 and entry["sfreq_in"] == 1000
    assert entry["channel_policy"] == "exact" and entry["system"] == "neuromag306"
    assert entry["segments_written"] == 20 and entry["seconds_kept"] == 20
    x = load_recording(dest, "gen_raw").astype(np.float64)
    assert x.shape == (306, 5000)
    # z-scored per channel over the recording
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=1), 1, atol=1e-4)
    # spectrum, after the start transient: passband kept, stopbands removed
    y = x[:, 1000:]  # 4 s .. 20 s = 16 s, integer cycles of every test frequency
    amp = {f: lockin_amplitude(y, f, 250.0).mean()
           for f in (0.25, 10.0, 15.0, 25.0, 50.0, 80.0)}
    assert abs(amp[25.0] / amp[10.0] - 1) < 0.02
    assert amp[80.0] < 0.01 * amp[10.0]     # above the 40 Hz edge
    assert amp[50.0] < 0.01 * amp[10.0]     # 300 Hz would alias to 50 Hz without anti-alias
    assert amp[15.0] < 0.003 * amp[10.0]    # 235 Hz would alias to 15 Hz, in the passband
    assert amp[0.25] < 0.02 * amp[10.0]     # below the 1 Hz edge
    assert (dest / "qc.png").stat().st_size > 1000


@pytest.mark.parametrize("sfreq,chunk", [(1000.0, 1.0), (600.0, 1.3), (250.0, 2.0)])
def test_streaming_matches_whole_recording(tmp_path, sfreq, chunk):
    """Chunked processing == resample_poly + sosfilt + z-score of the whole recording."""
    import mne
    from scipy import signal


    src = make_fif(tmp_path / "r_raw.fif", seconds=13.7, sfreq=sfreq, n_mag=6, n_grad=6,
                   sines=((3.0, 1.0), (17.0, 0.5), (60.0, 1.0)), noise=1.0)
    params = PreprocessParams(segment_seconds=0.5, n_channels=12, chunk_seconds=chunk)
    task = results.RecordingTask("r", str(src), {"params": params,
                                             "segments_root": str(tmp_path / "seg")})
    res = recordings.process_recording(task)
    got = np.concatenate([np.load(tmp_path / "seg" / p) for p, _ in res.segments], axis=1)

    x = mne.io.read_raw_fif(src, preload=True, verbose=False).get_data()
    x = (x - x[:, :int(sfreq)].mean(axis=1, keepdims=True)).astype(np.float32)
    up, down = dsp.rate_ratio(sfreq, 250.0)
    taps = dsp.design_resampling_filter(sfreq, 250.0, up, down, 40.0)
    y = (signal.resample_poly(x, up, down, axis=-1, window=taps) if taps is not None
         else x.astype(np.float64))  # 250 Hz in: no resampling
    sos = np.concatenate([signal.butter(4, 1.0, "highpass", fs=250.0, output="sos"),
                          signal.butter(8, 40.0, "lowpass", fs=250.0, output="sos")])
    y, _ = signal.sosfilt(sos, y, axis=-1, zi=signal.sosfilt_zi(sos)[:, None, :] * y[:, :1])
    z = (y - y.mean(axis=1, keepdims=True)) / y.std(axis=1, keepdims=True)
    assert got.shape == (12, z.shape[1] // 125 * 125)
    np.testing.assert_allclose(got, z[:, :got.shape[1]], rtol=0, atol=3e-6)


def test_channels_flat_bads_annotations_nan(tmp_path):
    """Bads excluded, flat zeroed, padding/truncation recorded, bad spans dropped+counted."""

    src = make_fif(tmp_path / "a_raw.fif", seconds=20, n_mag=10, n_grad=10, bads=[3],
                   flat=[12], nan_at=15.5, first_samp=4321, meas_date=1.6e9,
                   annotations=[(5.0, 1.0, "BAD_ACQ_SKIP"), (10.2, 0.2, "BAD_blink"),
                                (12.5, 0.2, "stimulus")])
    params = PreprocessParams(segment_seconds=1.0, n_channels=306)
    opts = {"params": params, "segments_root": str(tmp_path / "seg")}
    res = recordings.process_recording(results.RecordingTask("a", str(src), opts))
    # the skip (saved as a real FIF acquisition skip) also drops its neighbours, whose
    # edges the filters' ringing at the gap reaches
    assert res.segments_dropped == {"acquisition_skip": 3, "bad_annotation": 1, "nan": 1}
    assert [int(p[-10:-4]) for p, _ in res.segments] == [
        i for i in range(20) if i not in (4, 5, 6, 10, 15)]
    assert res.bad_channels == ["MAG003"] and "MAG003" not in res.channel_names
    assert res.flat_channels == ["GRD002"]
    assert res.channel_policy == "pad" and res.n_meg_channels == 19
    assert res.channel_names[19:] == ["PAD"] * (306 - 19)
    x = np.load(tmp_path / "seg" / res.segments[0][0])
    assert x.shape == (306, 250)
    assert not x[res.channel_names.index("GRD002")].any() and not x[19:].any()
    assert x[:19].std() > 0.5

    trunc = PreprocessParams(segment_seconds=1.0, n_channels=8)
    task = results.RecordingTask("b", str(src), {**opts, "params": trunc})
    res = recordings.process_recording(task)
    assert res.channel_policy == "truncate" and len(res.channel_names) == 8
    assert res.excluded_channels["truncated"][:2] == ["MAG009", "GRD000"]  # MAG003 is bad
    assert np.load(tmp_path / "seg" / res.segments[0][0]).shape == (8, 250)


def test_split_by_recording_deterministic_jobs_float16(tmp_path, tool):
    srcs = [make_fif(tmp_path / "in" / f"s{i}" / f"rec{i}_raw.fif", seconds=3, seed=i,
                     n_mag=4, n_grad=8) for i in range(5)]
    assert len(srcs) == 5

    def run(dest, seed, jobs):
        rc = tool.main(["raw", str(tmp_path / "in"), "--dest", str(dest), "--seed", str(seed),
                        "--valid-percent", "0.4", "--jobs", str(jobs), "--dtype", "float16",
                        "--segment-seconds", "1", "--n-channels", "16", "--no-progress"])
        assert rc == 0
        (_, train), (_, valid) = read_tsv(dest / "train.tsv"), read_tsv(dest / "valid.tsv")
        return ({r.split("/")[0] for r, _ in train}, {r.split("/")[0] for r, _ in valid},
                train, valid)

    tr, va, train, valid = run(tmp_path / "o1", seed=3, jobs=2)
    assert len(va) == 2 and len(tr) == 3 and not tr & va
    assert len(train) == 9 and len(valid) == 6
    assert np.load(Path(read_tsv(tmp_path / "o1/train.tsv")[0]) / train[0][0]).dtype \
        == np.float16
    assert run(tmp_path / "o2", seed=3, jobs=1)[:2] == (tr, va)
    assert any(run(tmp_path / f"o{s}", seed=s, jobs=1)[1] != va for s in (4, 5, 6))


def test_bad_inputs_reported_others_processed(tmp_path, tool, capsys):
    d = tmp_path / "in"
    good = make_fif(d / "good_raw.fif", seconds=4, n_mag=3, n_grad=3)
    make_fif(d / "eeg_raw.fif", seconds=4, eeg_only=True)
    make_fif(d / "short_raw.fif", seconds=1.5, n_mag=3, n_grad=3)
    make_fif(d / "lowrate_raw.fif", seconds=4, sfreq=100.0, n_mag=3, n_grad=3,
             sines=((5.0, 1.0),))
    full = make_fif(tmp_path / "t_raw.fif", seconds=4, n_mag=3, n_grad=3).read_bytes()
    (d / "trunc_raw.fif").write_bytes(full[: len(full) // 2])
    (d / "corrupt_raw.fif").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "empty").mkdir()
    dest = tmp_path / "out"
    rc = tool.main(["raw", str(d), str(tmp_path / "missing"), str(tmp_path / "empty"),
                    "--dest", str(dest), "--segment-seconds", "2", "--no-progress"])
    assert rc == 1
    rep = report(dest)
    expect = {
        "eeg_raw": "no MEG channels",
        "short_raw": "shorter than one segment",
        "lowrate_raw": "sampling rate 100 Hz is below the requested output rate",
        "trunc_raw": "truncated or corrupt",
        "corrupt_raw": "truncated or corrupt",
        "_input_missing": "path does not exist",
        "_input_empty": "no recordings found",
    }
    for rid, text in expect.items():
        assert rep[rid]["status"] == "failed" and text in rep[rid]["reason"], rep[rid]
        if rid.startswith(("eeg", "short", "low", "trunc", "corrupt")):
            assert rep[rid]["reason"].startswith(str(d / rid)), rep[rid]["reason"]
            assert not (dest / "segments" / rid).exists()
    assert rep["good_raw"]["status"] == "ok" and rep["good_raw"]["segments_written"] == 2
    out = capsys.readouterr().out
    assert "7 failed" in out and "no MEG channels" in out
    _, train = read_tsv(dest / "train.tsv")
    _, valid = read_tsv(dest / "valid.tsv")
    assert {r.split("/")[0] for r, _ in train + valid} == {"good_raw"}
    assert good.exists()


def test_usage_errors_exit_2_and_help(tmp_path, tool, capsys):
    for argv in (["raw", str(tmp_path)],  # no --dest
                 ["raw", str(tmp_path), "--dest", str(tmp_path / "o"), "--h-freq", "200"],
                 ["raw", str(tmp_path), "--dest", str(tmp_path / "o"), "--dtype", "int8"],
                 ["raw", str(tmp_path), "--dest", str(tmp_path / "o"), "--valid-percent", "1"],
                 ["nosuch"]):
        with pytest.raises(SystemExit) as exc:
            tool.main(argv)
        assert exc.value.code == 2
    with pytest.raises(SystemExit):
        tool.main(["raw", "--help"])
    text = capsys.readouterr().out
    for opt in ("--dest", "--pattern", "--valid-percent", "--seed", "--sfreq", "--l-freq",
                "--h-freq", "--segment-seconds", "--n-channels", "--dtype", "--jobs",
                "--overwrite", "--segments-dir", "--chunk-seconds", "--no-fsync"):
        assert opt in text


# ------------------------------------------------------------------------ resume
def _tree_state(root):
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_ino)
            for p in Path(root).rglob("*") if p.is_file()}


def test_resume_after_kill_9_byte_identical(tmp_path):
    """kill -9 mid-run, same command again -> byte-identical manifests; then no work."""
    for i in range(4):
        make_fif(tmp_path / "in" / f"rec{i}_raw.fif", seconds=40, seed=i, n_mag=34, n_grad=68)
    dest = tmp_path / "out"
    cmd = [sys.executable, str(TOOL), "raw", str(tmp_path / "in"), "--dest", str(dest),
           "--segment-seconds", "0.5", "--n-channels", "102", "--valid-percent", "0.25",
           "--chunk-seconds", "2", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    assert subprocess.run(cmd, capture_output=True, env=env).returncode == 0
    reference = {n: (dest / n).read_bytes() for n in ("train.tsv", "valid.tsv")}
    shutil.rmtree(dest)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if len(list((dest / "segments").glob("rec1_raw/*.npy"))) > 10:
            break
        time.sleep(0.005)
    killed_mid_run = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_mid_run, "the run finished before it could be killed"
    assert not (dest / "train.tsv").exists()  # manifests are written last
    assert not (dest / "segments" / "rec3_raw" / ownership.DONE_MARKER).exists()
    for p in (dest / "segments").rglob("*.npy"):  # no half-written segment under its name
        np.load(p)
    assert subprocess.run(cmd, capture_output=True, env=env).returncode == 0
    assert {n: (dest / n).read_bytes() for n in reference} == reference
    # a second run over finished output does no work
    before = _tree_state(dest / "segments")
    out = subprocess.run(cmd, capture_output=True, env=env, text=True)
    assert out.returncode == 0 and "0 ok, 4 already done" in out.stdout
    assert _tree_state(dest / "segments") == before
    assert {n: (dest / n).read_bytes() for n in reference} == reference
    assert {r["status"] for r in report(dest).values()} == {"skipped"}


def _library_rc(src, dest):
    """The exit status ``make_manifest.py raw SRC --segment-seconds 0.5 --n-channels 8``
    would give, from the library driver run in this process."""
    run = manifests.make_raw_manifests(
        [src], PreprocessParams(segment_seconds=0.5, n_channels=8),
        manifests.OutputOptions(dest=dest, progress=False))
    return 1 if run.failed else 0


def test_resume_after_failure_injected_mid_recording(tmp_path, tool, monkeypatch):
    """A recording that dies after 3 segments leaves no trace; the rerun completes it."""
    for i in range(2):
        make_fif(tmp_path / "in" / f"r{i}_raw.fif", seconds=4, seed=i, n_mag=4, n_grad=4)
    argv = ["raw", str(tmp_path / "in"), "--segment-seconds", "0.5", "--n-channels", "8",
            "--no-progress", "--dest"]
    assert tool.main(argv + [str(tmp_path / "ref")]) == 0
    real_save, calls = segmenter.atomic_save_npy, []

    def flaky(path, array, fsync=True):
        calls.append(path)
        if len(calls) == 3 + 8 + 1:  # r0 written (8 segments), r1 dies at its 4th
            raise OSError("disk full (injected)")
        return real_save(path, array, fsync)

    monkeypatch.setattr(segmenter, "atomic_save_npy", flaky)  # in this process: the library
    dest = tmp_path / "out"
    assert _library_rc(tmp_path / "in", dest) == 1
    rep = report(dest)
    assert rep["r0_raw"]["status"] == "ok"
    assert rep["r1_raw"]["status"] == "failed" and "disk full" in rep["r1_raw"]["reason"]
    assert not (dest / "segments" / "r1_raw").exists()
    monkeypatch.setattr(segmenter, "atomic_save_npy", real_save)
    assert tool.main(argv + [str(dest)]) == 0
    assert report(dest)["r0_raw"]["status"] == "skipped"
    for name in ("train.tsv", "valid.tsv"):
        ref_lines = (tmp_path / "ref" / name).read_text().splitlines()
        lines = (dest / name).read_text().splitlines()
        assert lines[1:] == ref_lines[1:] and lines[0] == str((dest / "segments").resolve())
    # different parameters: a done marker does not count, the recording is redone
    assert tool.main(argv + [str(dest), "--l-freq", "2"]) == 0
    assert {r["status"] for r in report(dest).values()} == {"ok"}


# ------------------------------------------------------------------ real recordings
def _real(name):
    path = REAL_MEG / name
    if not path.exists():
        pytest.skip(f"real MEG test data not found: {path} (../shared/real_meg)")
    return path


def test_real_recordings_from_several_systems(tmp_path, tool):
    files = [_real(n) for n in ("neuromag306_sample_audvis_trunc_raw_sss.fif",
                                "ctf275_comp_raw.fif", "elekta_3ch_80s_raw.fif",
                                "eeg_only_brainvision_raw.fif")]
    dest = tmp_path / "out"
    rc = tool.main(["raw", *map(str, files), "--dest", str(dest), "--segment-seconds", "0.2",
                    "--no-progress", "--jobs", "2"])
    assert rc == 1  # the EEG-only file failed, the others were written
    rep = report(dest)
    nm = rep["neuromag306_sample_audvis_trunc_raw_sss"]
    assert nm["status"] == "ok" and nm["system"] == "neuromag306"
    assert nm["n_meg_channels"] == 306 and nm["channel_policy"] == "exact"
    assert abs(nm["sfreq_in"] - 300.3) < 0.1 and nm["segments_written"] == 5
    ctf = rep["ctf275_comp_raw"]
    assert ctf["status"] == "ok" and ctf["system"] == "ctf"
    refs = ctf["excluded_channels"]["reference"]
    assert len(refs) == 29 and not set(refs) & set(ctf["channel_names"])
    assert ctf["n_meg_channels"] == 274 and ctf["channel_policy"] == "pad"
    el = rep["elekta_3ch_80s_raw"]
    assert el["n_meg_channels"] == 3 and el["segments_written"] == 400
    eeg = rep["eeg_only_brainvision_raw"]
    assert eeg["status"] == "failed" and "no MEG channels" in eeg["reason"]
    for rid, n_used in (("neuromag306_sample_audvis_trunc_raw_sss", 306),
                        ("ctf275_comp_raw", 274), ("elekta_3ch_80s_raw", 3)):
        x = load_recording(dest, rid)
        assert x.shape[0] == 306 and x.shape[1] % 50 == 0 and x.dtype == np.float32
        assert np.all(np.isfinite(x)) and not x[n_used:].any() and x[:n_used].std() > 0.3


# ------------------------------------------------------------------------- BIDS
def test_bids_subcommand_with_subject_filter(tmp_path, tool):
    mne_bids = pytest.importorskip("mne_bids")
    import mne

    bids_root = tmp_path / "bids"
    for sub in ("01", "02"):
        src = make_fif(tmp_path / f"src{sub}_raw.fif", seconds=3, n_mag=4, n_grad=8,
                       meas_date=1.6e9)
        raw = mne.io.read_raw_fif(src, verbose=False)
        raw.info["line_freq"] = 50
        bp = mne_bids.BIDSPath(subject=sub, task="rest", datatype="meg", root=bids_root)
        mne_bids.write_raw_bids(raw, bp, overwrite=True, verbose=False)
    dest = tmp_path / "out"
    rc = tool.main(["bids", str(bids_root), "--subjects", "02", "--dest", str(dest),
                    "--segment-seconds", "1", "--n-channels", "12", "--no-progress"])
    assert rc == 0
    rep = report(dest)
    assert list(rep) == ["sub-02__meg__sub-02_task-rest_meg"]
    assert rep["sub-02__meg__sub-02_task-rest_meg"]["segments_written"] == 3
    rc = tool.main(["bids", str(bids_root), "--tasks", "nosuch", "--dest",
                    str(tmp_path / "o2"), "--no-progress"])
    assert rc == 1 and "no MEG recordings found" in json.dumps(report(tmp_path / "o2"))


@pytest.mark.parametrize("up,down,default", [(1, 4, True), (5, 12, False), (651, 782, False),
                                             (2, 3, True), (1, 1, True)])
def test_streaming_resampler_equals_resample_poly(up, down, default):
    from scipy import signal

    from meg2vec_fairseq.preprocessing.dsp import (
        StreamingResampler,
        design_resampling_filter,
    )

    rng = np.random.default_rng(up + down)
    x = rng.standard_normal((3, 4001))
    taps = None if default else design_resampling_filter(250.0 * down / up, 250.0, up,
                                                         down, 40.0)
    r = StreamingResampler(up, down, taps)
    ref = signal.resample_poly(x, up, down, axis=-1, window=r.taps if taps is not None
                               else ("kaiser", 5.0))
    pos, outs = 0, []
    while pos < x.shape[1]:
        k = int(rng.integers(1, 500))
        outs.append(r.process(x[:, pos:pos + k]))
        pos += k
    outs.append(r.flush(3))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), ref, rtol=0, atol=1e-12)


def test_discovery_formats_derived_files_splits_and_pattern(tmp_path):
    from meg2vec_fairseq.preprocessing.discovery import discover_recordings

    root = tmp_path / "data"
    names = ["a/run1_raw.fif", "a/run1_raw-1.fif", "a/x_split-01_meg.fif",
             "a/x_split-02_meg.fif", "a/run1-epo.fif", "a/sub-01-cov.fif", "b/k.sqd",
             "b/k2.con", "c/c,rfDC", "c/config", "notes.txt", "ctf.ds/ctf.meg4",
             "ctf.ds/inner_raw.fif"]
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")
    not_used = []
    found, problems = discover_recordings([root], not_used=not_used)
    rel = [p.relative_to(root.resolve()).as_posix() for p, _ in found]
    # Split parts are recognised by content (tests/test_recording_checks.py), not by
    # name: these unreadable stand-ins stay recordings (and fail when processed).
    assert rel == ["a/run1_raw-1.fif", "a/run1_raw.fif", "a/x_split-01_meg.fif",
                   "a/x_split-02_meg.fif", "b/k.sqd", "b/k2.con", "c/c,rfDC",
                   "ctf.ds"] and problems == []
    why = {Path(d["path"]).name: d["reason"] for d in not_used}
    assert set(why) == {"run1-epo.fif", "sub-01-cov.fif", "config", "notes.txt"}
    assert "derived FIF file ('epo' in the name)" in why["run1-epo.fif"]
    assert "matches none of the patterns" in why["notes.txt"]
    found, _ = discover_recordings([root], patterns=["*.sqd", "*.ds"])
    assert [p.name for p, _ in found] == ["k.sqd", "ctf.ds"]
    found, problems = discover_recordings([root / "b" / "k.sqd", root / "c"],
                                          patterns=["*.fif"])
    assert [p.name for p, _ in found] == ["k.sqd"]  # a file ROOT is taken as is
    assert "nothing matches *.fif" in problems[0].reason


def test_pattern_segments_dir_overwrite_progress_report(tmp_path):
    make_fif(tmp_path / "in" / "keep_raw.fif", seconds=3, n_mag=3, n_grad=3)
    make_fif(tmp_path / "in" / "other_raw.fif", seconds=3, n_mag=3, n_grad=3)
    dest, segdir = tmp_path / "out", tmp_path / "elsewhere"
    cmd = [sys.executable, str(TOOL), "raw", str(tmp_path / "in"), "--pattern", "keep*",
           "--dest", str(dest), "--segments-dir", str(segdir), "--segment-seconds", "1",
           "--n-channels", "6", "--valid-percent", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "100%" in out.stderr and "1/1" in out.stderr  # tqdm progress bar
    assert "1 recording(s): 1 ok" in out.stdout
    root, train = read_tsv(dest / "train.tsv")
    assert root == str(segdir.resolve()) and len(train) == 3
    assert (segdir / "keep_raw" / "000002.npy").exists() and not (dest / "segments").exists()
    assert read_tsv(dest / "valid.tsv")[1] == []
    rep = json.loads((dest / "report.json").read_text())
    assert rep["params"]["sfreq"] == 250 and rep["summary"]["segments_written"] == 3
    entry = rep["recordings"][0]
    for key in ("recording_id", "source", "status", "reason", "system", "n_channels",
                "n_meg_channels", "channel_policy", "channel_names", "excluded_channels",
                "bad_channels", "flat_channels", "sfreq_in", "sfreq_out", "seconds_in",
                "seconds_kept", "segments_written", "segments_dropped", "tail_seconds",
                "qc", "split"):
        assert key in entry
    assert entry["qc"]["before"]["freqs"] and entry["qc"]["after"]["psd"]
    before = _tree_state(segdir)
    out = subprocess.run(cmd + ["--overwrite", "--no-progress"], capture_output=True, text=True)
    assert out.returncode == 0 and "1 ok, 0 already done" in out.stdout
    after = _tree_state(segdir)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)


def test_all_channels_bad_and_nothing_usable(tmp_path):

    params = PreprocessParams(segment_seconds=1.0, n_channels=4)
    opts = {"params": params, "segments_root": str(tmp_path / "seg")}
    src = make_fif(tmp_path / "bads_raw.fif", seconds=3, n_mag=2, n_grad=2, bads=[0, 1, 2, 3])
    with pytest.raises(errors.RecordingError, match="all 4 MEG channels are marked bad"):
        recordings.process_recording(results.RecordingTask("bads", str(src), opts))
    src = make_fif(tmp_path / "allbad_raw.fif", seconds=3, n_mag=2, n_grad=2,
                   annotations=[(0.0, 3.0, "BAD_movement")])
    with pytest.raises(errors.RecordingError, match="no usable data"):
        recordings.process_recording(results.RecordingTask("allbad", str(src), opts))
    assert not (tmp_path / "seg" / "allbad").exists()


_PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_memory_does_not_grow_with_recording_length(tmp_path):
    """Peak RSS of the tool on a 4x longer recording stays (nearly) the same."""
    import mne

    piece = make_fif(tmp_path / "piece_raw.fif", seconds=15, n_mag=102, n_grad=204)
    (tmp_path / "in").mkdir()
    for name, n in (("short", 4), ("long", 16)):  # 60 s and 240 s, both past qc_seconds
        raws = [mne.io.read_raw_fif(piece, verbose=False) for _ in range(n)]
        raw = mne.concatenate_raws(raws, verbose=False)  # lazy: raw.save streams it
        raw.set_annotations(None)
        raw.save(tmp_path / "in" / f"{name}_raw.fif", verbose=False)
    rss = {}
    for name in ("short", "long"):
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, sys.executable, str(TOOL), "raw",
             str(tmp_path / "in" / f"{name}_raw.fif"), "--dest", str(tmp_path / name),
             "--chunk-seconds", "2", "--no-progress", "--no-qc"],
            capture_output=True, text=True, check=True)
        rss[name] = int(out.stdout.split()[-1]) / 1024  # MiB
    assert report(tmp_path / "long")["long_raw"]["segments_written"] == 48
    # 180 s more of 306 channels would be 420 MB as float64, 210 MB as float32
    assert rss["long"] - rss["short"] < 60, rss  # run-to-run noise is ~15 MB
