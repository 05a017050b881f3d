"""Tests for ``tools/make_manifest.py raw|bids`` and the shared segment machinery.

Generated recordings are written to ``tmp_path`` with :class:`mne.io.RawArray`; the real
recordings are read from ``../shared/real_meg`` (skipped when absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meg2vec_fairseq.preprocessing import segments as seg
from meg2vec_fairseq.preprocessing.segments import (
    RecordingResult,
    Segmenter,
    assign_splits,
    atomic_save_npy,
    load_done_marker,
    make_recording_ids,
    params_fingerprint,
    prepare_recording_dir,
    write_done_marker,
    write_manifests,
    write_segments,
)

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
    (rec / "junk.npy").write_bytes(b"partial")
    rec = prepare_recording_dir(root, "rec")  # wipes leftovers of an interrupted run
    assert list(rec.iterdir()) == []
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
    tasks = [seg.RecordingTask(f"r{i}", f"s{i}", {"fail": i == 1}) for i in range(3)]
    out = seg.run_recordings(_fail_or_echo, tasks, jobs=jobs, progress=False)
    assert [r.status for r in out] == ["ok", "failed", "ok"]
    assert "s1: broken" in out[1].reason
