"""Tests of the LibriBrain input (issue 5): pnpl on a small fake tree, downloads off."""

from __future__ import annotations

import os
import re
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from libribrain_fake import (  # noqa: E402
    DEFAULT_PROC,
    FIRST_TRAIN_KEY,
    OTHER_TRAIN_KEY,
    TEST_KEY,
    VALIDATION_KEY,
    make_fake_libribrain,
    read_run,
    write_run,
)
from meg_fixtures import ToolRun  # noqa: E402

from meg2vec_fairseq.io import atomic  # noqa: E402
from meg2vec_fairseq.preprocessing import libribrain as lb  # noqa: E402
from meg2vec_fairseq.preprocessing import (  # noqa: E402
    libribrain_pipeline,
    segmenter,
)
from meg2vec_fairseq.preprocessing.params import LibriBrainConfig  # noqa: E402
from meg2vec_fairseq.preprocessing.stats import RunningStats  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFREQ = 250.0


@pytest.fixture()
def tree(tmp_path):
    """Four runs of 4 s: two training runs (incl. the first), validation and test."""
    root = tmp_path / "libribrain"
    paths = make_fake_libribrain(str(root), seconds=4.0)
    return root, paths


def _resolver(root, download=False):
    return lb.make_resolver(str(root), preprocessing_str=DEFAULT_PROC, download=download)


# ------------------------------------------------------------------------------- selection


def test_partitions_come_from_pnpl():
    sel = lb.select_runs()
    assert sel.valid == [VALIDATION_KEY]
    assert FIRST_TRAIN_KEY in sel.train and len(sel.train) == 84
    assert VALIDATION_KEY not in sel.train and TEST_KEY not in sel.train
    assert lb.dataset_family().partition_keys("test") == [TEST_KEY]


def test_explicit_run_keys_override_partitions_and_exclusions_apply():
    sel = lb.select_runs(
        train_run_keys=[FIRST_TRAIN_KEY, OTHER_TRAIN_KEY],
        valid_partition="test",
        exclude_run_keys=[OTHER_TRAIN_KEY],
    )
    assert sel.train == [FIRST_TRAIN_KEY]
    assert sel.valid == [TEST_KEY]
    sel = lb.select_runs(valid_run_keys=[VALIDATION_KEY, TEST_KEY], exclude_run_keys=[TEST_KEY])
    assert sel.valid == [VALIDATION_KEY] and len(sel.train) == 84


def test_unknown_partition_is_an_error():
    with pytest.raises(lb.LibriBrainError, match="unknown libribrain partition 'trian'"):
        lb.select_runs(train_partition="trian")


def test_run_key_in_both_sides_is_an_error():
    with pytest.raises(lb.LibriBrainError, match="both train and valid"):
        lb.select_runs(valid_run_keys=[FIRST_TRAIN_KEY])


@pytest.mark.parametrize("text", ["0,1,Sherlock1", "0,1,Sherlock1,1,2", "0,,Sherlock1,1",
                                  "0,1,Sher/lock1,1", "0;1;Sherlock1;1"])
def test_malformed_run_key(text):
    with pytest.raises(lb.LibriBrainError, match="malformed run key"):
        lb.parse_run_key(text)


def test_parse_run_key():
    assert lb.parse_run_key(" 0, 11,Sherlock1 ,2") == VALIDATION_KEY


def test_libribrain100_family_reads_pnpl_manifest():
    fam = lb.dataset_family("libribrain100")
    assert VALIDATION_KEY in fam.partitions["validation"]
    assert FIRST_TRAIN_KEY in fam.partitions["train"]
    assert ("0", "1", "Sherlock8", "1") in fam.partitions["train"]  # LibriBrain2 run


# ----------------------------------------------------------------------------- paths, files


def test_resolver_uses_pnpl_layout(tree):
    root, paths = tree
    r = _resolver(root)
    for key, path in paths.items():
        assert lb.h5_path(r, key) == path
    r100 = lb.make_resolver(str(root), "libribrain100", DEFAULT_PROC)
    assert lb.h5_path(r100, VALIDATION_KEY) == paths[VALIDATION_KEY]


def test_missing_file_with_downloads_off_names_key_and_path(tree):
    root, paths = tree
    missing = ("0", "3", "Sherlock1", "1")
    loc = lb.locate_runs(_resolver(root), [FIRST_TRAIN_KEY, missing], progress=False)
    assert set(loc.paths) == {FIRST_TRAIN_KEY}
    msg = loc.errors[missing]
    assert "0,3,Sherlock1,1" in msg
    assert os.path.join(str(root), "Sherlock1", "derivatives", "serialised",
                        f"sub-0_ses-3_task-Sherlock1_run-1_proc-{DEFAULT_PROC}_meg.h5") in msg


def test_failed_download_is_a_clear_per_run_error(tree, monkeypatch):
    root, _ = tree
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails at once, offline
    missing = ("0", "4", "Sherlock1", "1")
    loc = lb.locate_runs(_resolver(root, download=True), [FIRST_TRAIN_KEY, missing],
                         progress=False)
    assert FIRST_TRAIN_KEY in loc.paths
    assert "0,4,Sherlock1,1: download of" in loc.errors[missing]
    assert "huggingface_hub" in loc.errors[missing]


def test_download_goes_through_pnpl(tree, tmp_path, monkeypatch):
    """--download: missing runs come from pnpl's downloader (faked: copies from a 'hub' tree)."""
    hub, _ = tree
    fetched = []

    def fake_download(fpath, rel_path, data_path, primary_repo, fallback_repos=None,
                      max_retries=5):
        fetched.append((rel_path, primary_repo))
        os.makedirs(os.path.dirname(fpath), exist_ok=True)
        with open(os.path.join(hub, rel_path), "rb") as src, open(fpath, "wb") as dst:
            dst.write(src.read())
        return fpath

    mixin = lb.import_pnpl("pnpl.datasets.mixins").HFDownloadMixin
    monkeypatch.setattr(mixin, "_download_with_retry_static", staticmethod(fake_download))
    data = tmp_path / "empty"  # does not exist yet: allowed with downloads on
    out = _run(data, tmp_path / "out", download=True, train_run_keys=[FIRST_TRAIN_KEY])
    assert out["failed"] == 0
    assert sorted(fetched) == sorted(
        (os.path.relpath(lb.h5_path(_resolver(data), k), data), "pnpl/LibriBrain")
        for k in (FIRST_TRAIN_KEY, VALIDATION_KEY))
    assert _run_ids(_manifest(tmp_path / "out", "valid")[1]) == [lb.run_key_name(VALIDATION_KEY)]


def test_check_run_accepts_a_good_run(tree):
    root, paths = tree
    info = lb.check_run(paths[FIRST_TRAIN_KEY], FIRST_TRAIN_KEY, segment_seconds=2.0)
    assert (info.n_channels, info.n_times, info.sfreq) == (306, 1000, SFREQ)


def test_h5_without_data_dataset(tmp_path):
    path = str(tmp_path / "x.h5")
    write_run(path, np.zeros((306, 600), np.float32), dataset_name="meg")
    with pytest.raises(lb.LibriBrainError, match=r"0,1,Sherlock1,1.*x\.h5.*no 'data' dataset"):
        lb.check_run(path, FIRST_TRAIN_KEY)


def test_wrong_channel_count(tmp_path):
    path = str(tmp_path / "x.h5")
    write_run(path, np.zeros((305, 600), np.float32))
    with pytest.raises(lb.LibriBrainError, match="305 channels, expected 306"):
        lb.check_run(path, FIRST_TRAIN_KEY)


def test_run_shorter_than_a_segment(tmp_path):
    path = str(tmp_path / "x.h5")
    write_run(path, np.zeros((306, 100), np.float32))
    with pytest.raises(lb.LibriBrainError, match="shorter than one segment"):
        lb.check_run(path, FIRST_TRAIN_KEY, segment_seconds=1.0)


# ------------------------------------------------------------------------------ statistics


def test_streamed_statistics_equal_numpy_and_pnpl(tree):
    root, paths = tree
    r = _resolver(root)
    pooled = RunningStats()
    for key in (FIRST_TRAIN_KEY, OTHER_TRAIN_KEY):
        pooled.merge(lb.run_statistics(r, key, chunk_samples=137))
    x = np.concatenate([read_run(paths[k]) for k in (FIRST_TRAIN_KEY, OTHER_TRAIN_KEY)], axis=1)
    x = x.astype(np.float64)
    np.testing.assert_allclose(pooled.mean, x.mean(axis=1), rtol=1e-9, atol=1e-22)
    np.testing.assert_allclose(pooled.std, x.std(axis=1), rtol=1e-9)
    assert pooled.n == x.shape[1]


def test_cached_pnpl_statistics_are_used(tree):
    root, paths = tree
    with h5py.File(paths[FIRST_TRAIN_KEY], "r+") as f:
        f["data"].attrs["channel_means"] = np.full(306, 2.0)
        f["data"].attrs["channel_stds"] = np.full(306, 3.0)
    st = lb.run_statistics(_resolver(root), FIRST_TRAIN_KEY, 100)
    np.testing.assert_allclose(st.mean, 2.0)
    np.testing.assert_allclose(st.std, 3.0)
    st = lb.run_statistics(_resolver(root), FIRST_TRAIN_KEY, 100, use_cached=False)
    assert np.all(np.abs(st.mean) < 1e-9)


def test_channel_stats_roundtrip_and_apply(tmp_path):
    rs = RunningStats()
    rs.update(np.vstack([np.arange(10.0), np.zeros(10)] * 153))
    stats = lb.ChannelStats.from_running(rs, clip=1.5, run_keys=[FIRST_TRAIN_KEY], sfreq=SFREQ)
    assert 1 in stats.zero_std_channels and stats.stds[1] == 1.0
    lb.save_channel_stats(stats, str(tmp_path))
    back = lb.load_channel_stats(str(tmp_path))
    np.testing.assert_array_equal(back.means, stats.means)
    np.testing.assert_array_equal(back.stds, stats.stds)
    assert back.run_keys == [FIRST_TRAIN_KEY] and back.clip == 1.5
    y = back.apply(np.vstack([np.arange(10.0), np.zeros(10)] * 153))
    assert y.dtype == np.float32 and y.max() == 1.5 and y.min() == -1.5
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))  # no temp file left


# ------------------------------------------------------------------------------ pipeline


def _run(root, dest, **kw):
    kw.setdefault("train_run_keys", [FIRST_TRAIN_KEY, OTHER_TRAIN_KEY])
    kw.setdefault("segment_seconds", 1.0)
    kw.setdefault("progress", False)
    kw.setdefault("qc", False)
    kw.setdefault("fsync", False)
    cfg = LibriBrainConfig(str(root), str(dest), **kw)
    return libribrain_pipeline.make_libribrain_manifests(cfg)


def _manifest(dest, split):
    lines = (dest / f"{split}.tsv").read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def _run_ids(rows):
    return sorted({rel.split("/")[0] for rel, _ in rows})


def test_pipeline_selection_shapes_dtypes_clipping(tree, tmp_path):
    root, _ = tree
    dest = tmp_path / "out"
    out = _run(root, dest, qc=True, jobs=2)
    assert out["failed"] == 0
    seg_root, train = _manifest(dest, "train")
    _, valid = _manifest(dest, "valid")
    assert _run_ids(train) == [lb.run_key_name(FIRST_TRAIN_KEY), lb.run_key_name(OTHER_TRAIN_KEY)]
    assert _run_ids(valid) == [lb.run_key_name(VALIDATION_KEY)]  # test run never included
    assert len(train) == 8 and len(valid) == 4  # 4 s runs, 1 s segments
    clipped = 0.0
    for rel, n in train + valid:
        x = np.load(os.path.join(seg_root, rel))
        assert x.shape == (306, 250) and int(n) == 250 and x.dtype == np.float32
        assert np.abs(x).max() <= 10.0
        clipped = max(clipped, np.abs(x).max())
    assert clipped == 10.0  # the spikes were clipped to exactly +-clip
    report = __import__("json").loads((dest / "report.json").read_text())
    entries = {e["recording_id"]: e for e in report["recordings"]}
    assert entries[lb.run_key_name(VALIDATION_KEY)]["split"] == "valid"
    assert entries[lb.run_key_name(FIRST_TRAIN_KEY)]["extra"]["run_key"] == list(FIRST_TRAIN_KEY)
    assert (dest / "qc.png").stat().st_size > 0


def test_statistics_from_train_runs_only_applied_to_valid(tree, tmp_path):
    root, paths = tree
    dest = tmp_path / "out"
    _run(root, dest)
    stats = lb.load_channel_stats(str(dest))
    train = np.concatenate([read_run(paths[k]) for k in (FIRST_TRAIN_KEY, OTHER_TRAIN_KEY)],
                           axis=1).astype(np.float64)
    np.testing.assert_allclose(stats.means, train.mean(axis=1), rtol=1e-9, atol=1e-22)
    np.testing.assert_allclose(stats.stds, train.std(axis=1), rtol=1e-9)
    valid = read_run(paths[VALIDATION_KEY]).astype(np.float64)
    assert not np.allclose(stats.means, valid.mean(axis=1), rtol=1e-3, atol=0)  # not valid's stats
    assert stats.run_keys == [FIRST_TRAIN_KEY, OTHER_TRAIN_KEY] and stats.clip == 10.0
    seg_root, rows = _manifest(dest, "valid")
    x = np.load(os.path.join(seg_root, rows[1][0]))
    expected = np.clip((valid[:, 250:500] - stats.means[:, None]) / stats.stds[:, None], -10, 10)
    np.testing.assert_allclose(x, expected, atol=1e-4)


def test_segments_match_pnpl_standardisation_with_train_stats(tmp_path):
    """pnpl's own windows, given our training statistics, equal our valid segments."""
    root = tmp_path / "lb"
    make_fake_libribrain(str(root), seconds=4.0, events=True)
    dest = tmp_path / "out"
    _run(root, dest)
    stats = lb.load_channel_stats(str(dest))
    speech = lb.import_pnpl("pnpl.datasets").LibriBrainSpeech
    ds = speech(str(root), partition="validation", tmin=0.0, tmax=1.0, download=False,
                preload_files=False, channel_means=stats.means, channel_stds=stats.stds,
                clipping_boundary=10.0)
    seg_root, rows = _manifest(dest, "valid")
    for i, (rel, _) in enumerate(rows[: len(ds)]):
        np.testing.assert_allclose(np.load(os.path.join(seg_root, rel)), ds[i][0].numpy(),
                                   atol=1e-4)
    ds.close_h5_files()


def test_float16_and_custom_clip(tree, tmp_path):
    root, _ = tree
    dest = tmp_path / "out"
    _run(root, dest, dtype="float16", clip=3.0, valid_partition=None)
    seg_root, rows = _manifest(dest, "train")
    x = np.load(os.path.join(seg_root, rows[0][0]))
    assert x.dtype == np.float16 and x.shape == (306, 250) and np.abs(x).max() == 3.0
    assert _manifest(dest, "valid")[1] == []


def test_bad_runs_are_reported_and_the_others_processed(tree, tmp_path):
    root, paths = tree
    bad = {("0", "5", "Sherlock1", "1"): dict(data=np.zeros((306, 600), np.float32),
                                               dataset_name="meg"),
           ("0", "6", "Sherlock1", "1"): dict(data=np.zeros((305, 600), np.float32)),
           ("0", "7", "Sherlock1", "1"): dict(data=np.zeros((306, 100), np.float32))}
    proc_path = paths[FIRST_TRAIN_KEY].replace("ses-1_", "ses-{}_")
    for key, kw in bad.items():
        write_run(proc_path.format(key[1]), **kw)
    missing = ("0", "8", "Sherlock1", "1")
    out = _run(root, tmp_path / "out",
               train_run_keys=[FIRST_TRAIN_KEY, *bad, missing])
    reasons = {r.recording_id: r.reason for r in out["results"] if r.status == "failed"}
    assert out["failed"] == 4
    assert "no 'data' dataset" in reasons[lb.run_key_name(("0", "5", "Sherlock1", "1"))]
    assert "305 channels" in reasons[lb.run_key_name(("0", "6", "Sherlock1", "1"))]
    assert "shorter than one segment" in reasons[lb.run_key_name(("0", "7", "Sherlock1", "1"))]
    assert "0,8,Sherlock1,1: file not found" in reasons[lb.run_key_name(missing)]
    _, train = _manifest(tmp_path / "out", "train")
    assert _run_ids(train) == [lb.run_key_name(FIRST_TRAIN_KEY)]
    assert lb.load_channel_stats(str(tmp_path / "out")).run_keys == [FIRST_TRAIN_KEY]


def test_data_path_must_exist_without_download(tmp_path, capsys):
    with pytest.raises(SystemExit):  # the library names data_path=..., the tool DATA_PATH
        _cli(["libribrain", tmp_path / "nowhere", "--dest", tmp_path / "out"])
    assert re.search("DATA_PATH .*nowhere does not exist", capsys.readouterr().err)
    assert not (tmp_path / "nowhere").exists()


def test_resume_after_interruption_is_byte_identical_and_then_idle(tree, tmp_path, monkeypatch):
    root, _ = tree
    ref = tmp_path / "ref"
    _run(root, ref)
    dest = tmp_path / "out"
    calls = {"n": 0}
    real_save = atomic.atomic_save_npy

    def crash_after_six(path, array, fsync=True):
        calls["n"] += 1
        if calls["n"] > 6:  # "kill" in the middle of the second run
            raise KeyboardInterrupt
        real_save(path, array, fsync)

    monkeypatch.setattr(segmenter, "atomic_save_npy", crash_after_six)
    with pytest.raises(KeyboardInterrupt):
        _run(root, dest)
    monkeypatch.setattr(segmenter, "atomic_save_npy", real_save)
    assert not (dest / "train.tsv").exists()  # manifests only when finished
    out = _run(root, dest)
    assert [r.status for r in out["results"]] == ["skipped", "ok", "ok"]
    for split in ("train", "valid"):
        assert (dest / f"{split}.tsv").read_bytes() == (ref / f"{split}.tsv").read_bytes() \
            .replace(str((ref / "segments").resolve()).encode(),
                     str((dest / "segments").resolve()).encode())
    before = {p: p.stat().st_mtime_ns for p in (dest / "segments").rglob("*")}
    manifests = [(dest / f"{s}.tsv").read_bytes() for s in ("train", "valid")]
    out = _run(root, dest)  # nothing left to do
    assert {r.status for r in out["results"]} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in (dest / "segments").rglob("*")} == before
    assert [(dest / f"{s}.tsv").read_bytes() for s in ("train", "valid")] == manifests
    out = _run(root, dest, overwrite=True)
    assert {r.status for r in out["results"]} == {"ok"}


def test_changing_training_runs_recomputes_everything(tree, tmp_path):
    root, _ = tree
    dest = tmp_path / "out"
    _run(root, dest)
    first = lb.load_channel_stats(str(dest)).means
    out = _run(root, dest, train_run_keys=[FIRST_TRAIN_KEY])
    assert {r.status for r in out["results"]} == {"ok"}  # new stats -> new segments
    assert not np.allclose(lb.load_channel_stats(str(dest)).means, first, atol=0)


# -------------------------------------------------------------------- command line, offline

TOOL = os.path.join(REPO, "tools", "make_manifest.py")

# Imported by the interpreter at start-up (PYTHONPATH): every connection attempt is logged to
# $NET_GUARD_LOG and refused. pnpl swallows fetch errors, so the log is what the test checks.
SITECUSTOMIZE = '''
import os, socket
_LOG = os.environ["NET_GUARD_LOG"]
def _refuse(*args, **kwargs):
    with open(_LOG, "a") as f:
        f.write(repr(args[1:3]) + "\\n")
    raise OSError("network access refused by the test's sitecustomize")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


def _guarded(tmp_path):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PNPL_")}
    env.update(PYTHONPATH=str(guard), NET_GUARD_LOG=str(log),
               PNPL_CACHE_DIR=str(tmp_path / "pnpl_cache"))  # no cached constants to hide a fetch
    # A .env that would switch pnpl's remote constants back on if pnpl loaded it.
    (tmp_path / ".env").write_text("PNPL_REMOTE_CONSTANTS_DISABLED=false\n"
                                   "PNPL_REMOTE_CONSTANTS_URL=http://example.invalid/c.json\n")
    return env, log


def test_nothing_touches_the_network_with_downloads_off(tree, tmp_path):
    import subprocess

    root, _ = tree
    env, log = _guarded(tmp_path)
    # Control: plain pnpl in the same environment does try the network (.env + remote fetch).
    control = subprocess.run(
        [sys.executable, "-c", "from pnpl.datasets.libribrain2025 import constants as c; "
                               "print(len(c.RUN_KEYS))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert control.returncode == 0, control.stderr
    assert log.is_file() and log.read_text(), "the guard did not see pnpl's fetch"
    log.unlink()
    missing = "0,3,Sherlock1,1"
    res = subprocess.run(
        [sys.executable, TOOL, "libribrain", str(root), "--dest", str(tmp_path / "out"),
         "--train-run-keys", "0,1,Sherlock1,1", missing, "--segment-seconds", "1",
         "--no-progress", "--no-qc"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr  # the missing run, nothing else
    assert f"run {missing}: file not found" in res.stdout
    assert not log.exists(), log.read_text()
    assert (tmp_path / "out" / "train.tsv").is_file() and (tmp_path / "out" / "valid.tsv").is_file()


def _cli(argv):
    return ToolRun("make_manifest").main(argv)


@pytest.mark.parametrize("extra, message", [
    (["--train-partition", "trian"], "unknown libribrain partition 'trian'"),
    (["--exclude-run-keys", "0,1,Sherlock1"], "malformed run key '0,1,Sherlock1'"),
    (["--valid-percent", "0.2"], "--valid-percent/--seed do not apply"),
])
def test_cli_usage_errors(tree, tmp_path, capsys, extra, message):
    root, _ = tree
    with pytest.raises(SystemExit) as exc:
        _cli(["libribrain", root, "--dest", tmp_path / "out", *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_missing_data_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(["libribrain", tmp_path / "nope", "--dest", tmp_path / "out"])
    assert exc.value.code == 2 and "nope does not exist" in capsys.readouterr().err


def test_cli_libribrain100_same_layout(tree, tmp_path, capsys):
    root, _ = tree
    rc = _cli(["libribrain", root, "--dest", tmp_path / "out", "--dataset", "libribrain100",
               "--train-run-keys", "0,1,Sherlock1,1", "--valid-run-keys", "0,11,Sherlock1,2",
               "--segment-seconds", "2", "--no-progress", "--no-qc", "--no-fsync"])
    assert rc == 0, capsys.readouterr()
    _, rows = _manifest(tmp_path / "out", "valid")
    assert _run_ids(rows) == [lb.run_key_name(VALIDATION_KEY)] and len(rows) == 2


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_libribrain_to_fairseq_train_and_validate(tmp_path):
    """Fake tree -> make_manifest.py libribrain -> fairseq-hydra-train (tiny) -> fairseq-validate,
    the command lines of the README (LibriBrain, end to end), run from the repository root."""
    from meg_fixtures import parse_fairseq_log, run_command

    root = tmp_path / "libribrain"
    make_fake_libribrain(str(root), [FIRST_TRAIN_KEY, OTHER_TRAIN_KEY], seconds=20.0)
    # fairseq-validate's default --required-batch-size-multiple 8 drops a last partial batch:
    # give valid 8 segments (40 s) so the documented command has one whole batch.
    make_fake_libribrain(str(root), [VALIDATION_KEY], seconds=40.0)
    data = tmp_path / "manifests"
    made = run_command(["python", "tools/make_manifest.py", "libribrain", str(root),
                        "--dest", str(data), "--train-run-keys", "0,1,Sherlock1,1",
                        "0,2,Sherlock1,1", "--no-progress"])
    assert made.returncode == 0, made.stdout + made.stderr
    assert len((data / "train.tsv").read_text().splitlines()) == 1 + 8  # 2 runs x 4 x 5 s
    save_dir = tmp_path / "checkpoints"
    train = run_command([
        "fairseq-hydra-train", "--config-dir", "config/pretraining",
        "--config-name", "meg2vec_tiny", "common.user_dir=meg2vec_fairseq",
        f"task.data={data}", f"checkpoint.save_dir={save_dir}", "optimization.max_update=4",
        "common.log_interval=1"])
    log = train.stdout + train.stderr
    assert train.returncode == 0, log[-3000:]
    stats = parse_fairseq_log(log, "train")
    assert stats and stats[-1]["num_updates"] == 4 and np.isfinite(stats[-1]["loss"])
    valid = run_command([
        "fairseq-validate", str(data), "--user-dir", "meg2vec_fairseq", "--task",
        "meg_pretraining", "--path", str(save_dir / "checkpoint_best.pt"),
        "--valid-subset", "valid", "--max-tokens", "10000"])
    log = valid.stdout + valid.stderr
    assert valid.returncode == 0, log[-3000:]
    record = [line for line in log.splitlines() if "valid on 'valid' subset" in line][-1]
    assert "nsentences 8" in record and "accuracy" in record
