"""Issue 12, defects 2 and 3: no recording silently left out, no corrupt sample passed as ok.

* Split FIF parts are recognised by content (the first part's next-file reference), not
  by a ``-<digits>.fif`` name: ``sub-01.fif`` is a recording; every file looked at and not
  used is listed in ``report.json`` with its reason.
* Physically implausible amplitudes (a flipped exponent bit, random bytes) are dropped
  spans, statistics are robust to extreme stretches, and no segment is ever written in
  which a live input channel became constant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from test_make_manifest_raw import _load_tool, make_fif  # noqa: E402

from meg2vec_fairseq import errors  # noqa: E402
from meg2vec_fairseq.preprocessing import (  # noqa: E402
    discovery,
    libribrain_pipeline,
    mne_raw,
    recordings,
    results,
    segmenter,
)
from meg2vec_fairseq.preprocessing.params import (
    LibriBrainConfig,  # noqa: E402
    PreprocessParams,  # noqa: E402
)
from meg2vec_fairseq.preprocessing.stats import TrimmedMoments  # noqa: E402


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


def _report(dest):
    return json.loads((Path(dest) / "report.json").read_text())


def _segments(root, res):
    return np.stack([np.load(Path(root) / p) for p, _ in res.segments])


def _process(src, tmp_path, rid="r", **params):
    params.setdefault("segment_seconds", 1.0)
    params.setdefault("n_channels", 10)
    opts = {"params": PreprocessParams(**params),
            "segments_root": str(tmp_path / "seg")}
    return recordings.process_recording(results.RecordingTask(rid, str(src), opts))


def _rewrite(src, edit):
    """Read a .fif, let ``edit`` change its data array in place, save it back."""
    import mne

    raw = mne.io.read_raw_fif(src, preload=True, verbose=False)
    edit(raw._data)
    raw.save(src, overwrite=True, verbose=False)
    return src


# ------------------------------------------------------------------ defect 2: discovery
def test_names_ending_in_digits_are_ordinary_recordings(tmp_path, tool, capsys):
    d = tmp_path / "in"
    for name in ("sub-01.fif", "meg-12.fif", "plain_raw.fif"):
        make_fif(d / name, seconds=3, n_mag=2, n_grad=2)
    dest = tmp_path / "out"
    assert tool.main(["raw", str(d), "--dest", str(dest), "--segment-seconds", "1",
                      "--n-channels", "4", "--no-progress", "--no-qc"]) == 0
    rep = _report(dest)
    assert {r["recording_id"]: r["status"] for r in rep["recordings"]} == {
        "sub-01": "ok", "meg-12": "ok", "plain_raw": "ok"}
    assert rep["not_used"] == [] and rep["summary"]["not_used"] == 0
    assert "0 file(s) not used" in capsys.readouterr().out


def test_real_split_recording_is_one_recording_parts_listed(tmp_path, tool, capsys):
    import mne

    d = tmp_path / "in"
    src = make_fif(tmp_path / "src_raw.fif", seconds=20, n_mag=3, n_grad=4)
    raw = mne.io.read_raw_fif(src, verbose=False)
    d.mkdir()
    raw.save(d / "x_raw.fif", split_size=1_200_000, verbose=False)  # MNE's minimum-ish
    parts = sorted(p.name for p in d.iterdir())
    assert "x_raw-1.fif" in parts and len(parts) >= 3, parts  # really split
    mne.make_fixed_length_epochs(raw, 1.0, verbose=False).save(d / "x-epo.fif",
                                                               verbose=False)
    (d / "notes.txt").write_text("not a recording")
    dest = tmp_path / "out"
    assert tool.main(["raw", str(d), "--dest", str(dest), "--segment-seconds", "1",
                      "--n-channels", "7", "--no-progress", "--no-qc"]) == 0
    rep = _report(dest)
    (entry,) = rep["recordings"]
    assert entry["recording_id"] == "x_raw" and entry["status"] == "ok"
    assert entry["seconds_in"] == 20 and entry["segments_written"] == 20  # all parts read
    why = {Path(u["path"]).name: u["reason"] for u in rep["not_used"]}
    continuation = [n for n in parts if n != "x_raw.fif"]
    assert set(why) == {*continuation, "x-epo.fif", "notes.txt"}
    for name in continuation:
        assert why[name].startswith("continuation part of split recording")
        assert why[name].endswith(f"{(d / 'x_raw.fif').resolve()} (read through it)")
    assert "derived FIF file ('epo' in the name)" in why["x-epo.fif"]
    assert "matches none of the patterns" in why["notes.txt"]
    assert rep["summary"]["not_used"] == len(why)
    assert f"{len(why)} file(s) not used" in capsys.readouterr().out


def test_a_continuation_part_alone_is_a_recording(tmp_path):
    """A part is skipped only when a file of this run continues into it."""
    import mne

    src = make_fif(tmp_path / "src_raw.fif", seconds=20, n_mag=3, n_grad=4)
    d = tmp_path / "in"
    d.mkdir()
    mne.io.read_raw_fif(src, verbose=False).save(d / "x_raw.fif", split_size=1_200_000,
                                                 verbose=False)
    (d / "x_raw.fif").unlink()
    not_used = []
    found, _ = discovery.discover_recordings([d], not_used=not_used)
    assert [p.name for p, _ in found] == ["x_raw-1.fif"]  # now the first of its chain
    assert all("x_raw-1.fif (read through it)" in u["reason"] for u in not_used)
    assert len(not_used) == len(list(d.iterdir())) - 1


# --------------------------------------------------------------- defect 3: bad samples
def test_one_absurd_sample_is_dropped_not_flattening_channels(tmp_path):
    """One 1e27 T sample (flipped exponent bit): its span dropped and counted, nothing
    zeroed, no channel constant in any segment (before: channel constant everywhere,
    and with two channels of a type the healthy one marked flat)."""
    def corrupt(x):
        x[0, 12345] = 1e27  # MAG000; only 2 magnetometers: the median is the mean of 2

    src = _rewrite(make_fif(tmp_path / "a_raw.fif", seconds=30, n_mag=2, n_grad=4),
                   corrupt)
    res = _process(src, tmp_path, n_channels=6)
    assert res.status == "ok" and res.flat_channels == []
    assert res.segments_dropped == {"implausible_amplitude": 1}
    assert res.extra["implausible_samples"] == {"MAG000": 1}
    assert res.segments_written == 29
    x = _segments(tmp_path / "seg", res)
    assert np.isfinite(x).all()
    assert x.std(axis=2).min() > 0.5  # every channel alive in every segment


def test_extreme_but_plausible_stretch_does_not_set_the_scale(tmp_path):
    """A 1e-9 T burst (a sensor jump, 1000x the signal) is kept in its segment, but the
    channel's std comes from the rest: elsewhere it is still ~unit variance."""
    def burst(x):
        x[1, 20000:20050] += 1e-9

    src = _rewrite(make_fif(tmp_path / "b_raw.fif", seconds=40, n_mag=2, n_grad=4), burst)
    res = _process(src, tmp_path, n_channels=6)
    assert res.status == "ok" and res.segments_written == 40 and res.flat_channels == []
    assert res.extra["implausible_samples"] == {}
    assert 0 < res.extra["stats_outlier_seconds"]["MAG001"] <= 5
    x = _segments(tmp_path / "seg", res).astype(np.float64)
    far = [i for i in range(40) if abs(i - 20) > 3]
    stds = x[far].std(axis=2)
    assert 0.8 < stds.mean() and stds.min() > 0.5  # plain moments: MAG001 at ~0.05


def test_random_bytes_in_the_data_block_never_ok_with_constant_segments(tmp_path):
    """4 KB of random bytes in the middle of the data: the damaged span is dropped and
    the rest is fine, or the recording fails with a reason; never 'ok' and flattened."""
    src = make_fif(tmp_path / "c_raw.fif", seconds=30, n_mag=4, n_grad=6)
    clean = src.read_bytes()
    # Offset 0 of a 40 kB data buffer: its tag header is hit too, and MNE then stops
    # reading there (half the recording, silently): that must fail.
    mid = len(clean) // 2
    blob = bytearray(clean)
    blob[mid:mid + 4096] = np.random.default_rng(12).bytes(4096)
    src.write_bytes(bytes(blob))
    with pytest.raises(errors.RecordingError, match="MNE reads data only up to byte"):
        _process(src, tmp_path, n_channels=10)
    # Inside a data buffer (past its 16-byte tag header): MNE reads it all.
    src.write_bytes(clean)
    ent = mne_raw.open_raw(src)._raw_extras[0]["ent"][15]  # the buffer of 15-16 s
    assert ent.size > 4096 + 1000
    blob = bytearray(clean)
    blob[ent.pos + 1000:ent.pos + 1000 + 4096] = np.random.default_rng(12).bytes(4096)
    src.write_bytes(bytes(blob))
    res = _process(src, tmp_path, n_channels=10)
    assert res.status == "ok" and res.flat_channels == []
    dropped = res.segments_dropped
    assert dropped.get("implausible_amplitude", 0) + dropped.get("nan", 0) >= 1, dropped
    assert res.segments_written >= 27
    x = _segments(tmp_path / "seg", res)
    assert np.isfinite(x).all() and x.std(axis=2).min() > 0.1


def test_constant_output_of_a_live_channel_fails_loudly(tmp_path):
    """The last check: a segment with a live input channel made constant is refused."""
    src = make_fif(tmp_path / "d_raw.fif", seconds=4, n_mag=2, n_grad=2)
    raw = mne_raw.open_raw(src)
    sel = mne_raw.select_channels(raw.info, 4, str(src))
    z = np.random.default_rng(0).standard_normal((4, 250)).astype(np.float32)
    quiet = z.copy()
    quiet[2] = 0.0  # GRD000 flattened
    flat = np.zeros(4, bool)
    std_in = np.full(4, 1e-11)
    segs = [segmenter.Segment(0, 0, z), segmenter.Segment(1, 250, quiet)]
    check = recordings._check_not_constant(iter(segs), raw, sel["picks"], sel, flat, std_in,
                                    4.0, str(src))
    assert next(check).index == 0
    with pytest.raises(errors.RecordingError, match=r"GRD000 would be constant in segment 1"):
        next(check)
    # a channel detected flat, or one whose input is quiet there too, is fine
    assert [s.index for s in recordings._check_not_constant(
        iter(segs), raw, sel["picks"], sel, np.array([0, 0, 1, 0], bool), std_in, 4.0,
        str(src))] == [0, 1]
    assert [s.index for s in recordings._check_not_constant(
        iter(segs), raw, sel["picks"], sel, flat, np.full(4, 1.0), 4.0, str(src))] == [0, 1]


def test_trimmed_moments_equal_plain_on_clean_data_any_chunking():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3001)) * np.array([1, 2, 3, 4, 5])[:, None] + 7
    good = np.ones(3001, bool)
    good[100:180] = False
    ref = x[:, good]
    for sizes in ([3001], [1, 2, 997, 2001], [250] * 12 + [1]):
        tm, pos = TrimmedMoments(5, 250), 0
        for k in sizes:
            tm.add(x[:, pos:pos + k], good[pos:pos + k])
            pos += k
        mean, std = tm.finish()
        np.testing.assert_allclose(mean, ref.mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(std, ref.std(axis=1), rtol=1e-12)
        assert not tm.excluded.any()
    x[2, 1500] = 1e6  # one block of channel 2 is an outlier: left out of its moments only
    tm = TrimmedMoments(5, 250)
    tm.add(x, good)
    mean, std = tm.finish()
    keep = good.copy()
    keep[1500:1750] = False
    np.testing.assert_allclose(std[2], x[2, keep].std(), rtol=1e-12)
    np.testing.assert_allclose(std[[0, 1, 3, 4]], ref[[0, 1, 3, 4]].std(axis=1), rtol=1e-12)
    assert tm.excluded.tolist() == [0, 0, 250, 0, 0]


# ------------------------------------------------------------------------ LibriBrain
def _libribrain(tmp_path, edit=None):
    from libribrain_fake import (
        DEFAULT_PROC,
        FIRST_TRAIN_KEY,
        OTHER_TRAIN_KEY,
        make_fake_libribrain,
        read_run,
        write_run,
    )

    from meg2vec_fairseq.preprocessing import libribrain as lb

    root = tmp_path / "lb"
    paths = make_fake_libribrain(str(root), seconds=8.0)
    if edit is not None:
        x = read_run(paths[FIRST_TRAIN_KEY])
        edit(x)
        write_run(paths[FIRST_TRAIN_KEY], x, 250.0)
    cfg = LibriBrainConfig(str(root), str(tmp_path / "out"), segment_seconds=1.0,
                              train_run_keys=[FIRST_TRAIN_KEY, OTHER_TRAIN_KEY],
                              preprocessing_str=DEFAULT_PROC, progress=False, qc=False,
                              fsync=False)
    out = libribrain_pipeline.make_libribrain_manifests(cfg)
    return lb, out, paths, (FIRST_TRAIN_KEY, OTHER_TRAIN_KEY)


def test_libribrain_absurd_sample_dropped_statistics_unharmed(tmp_path):
    """A 1e27 sample in a training run: left out of the statistics (before: channel 7's
    std ~1e24, so it was constant in every segment of every run), its segment dropped."""
    from libribrain_fake import read_run

    def corrupt(x):
        x[7, 1000] = 1e27

    lb, out, paths, train = _libribrain(tmp_path, corrupt)
    assert out["failed"] == 0
    res = {r.recording_id: r for r in out["results"]}
    first = res[lb.run_key_name(train[0])]
    assert first.segments_dropped == {"implausible_amplitude": 1}
    assert first.extra["implausible_samples"] == 1 and first.segments_written == 7
    x = np.concatenate([read_run(paths[k]) for k in train], axis=1).astype(np.float64)
    keep = np.ones(x.shape[1], bool)
    keep[1000] = False
    np.testing.assert_allclose(out["stats"].stds, x[:, keep].std(axis=1), rtol=1e-6)
    for r in out["results"]:
        for rel, _ in r.segments:
            z = np.load(tmp_path / "out" / "segments" / rel)
            # (channels 0-5 hold the fake's 500-std spikes: small std elsewhere)
            assert z[7].std() > 0.1 and z.std(axis=1).min() > 0.01  # runs differ in scale


def test_libribrain_constant_output_fails_loudly(tmp_path):
    """A run the statistics do not fit (a channel ~1e3 std off the training mean, so
    the clip pins it to +10): the run fails with a reason instead of writing it flat."""
    from libribrain_fake import OTHER_TRAIN_KEY, read_run, write_run

    from meg2vec_fairseq.preprocessing import libribrain as lb

    root = tmp_path / "lb"
    from libribrain_fake import make_fake_libribrain

    paths = make_fake_libribrain(str(root), seconds=4.0)
    x = read_run(paths[lb.parse_run_key("0,11,Sherlock1,2")])  # the validation run
    x[5] += 1e-8  # far beyond +-10 stds of channel 5 (~1e-12), still plausible
    write_run(paths[lb.parse_run_key("0,11,Sherlock1,2")], x, 250.0)
    cfg = LibriBrainConfig(str(root), str(tmp_path / "out"), segment_seconds=1.0,
                              train_run_keys=[lb.parse_run_key("0,1,Sherlock1,1"),
                                              OTHER_TRAIN_KEY],
                              progress=False, qc=False, fsync=False)
    out = libribrain_pipeline.make_libribrain_manifests(cfg)
    (bad,) = [r for r in out["results"] if r.status == "failed"]
    assert "0,11,Sherlock1,2" in bad.reason and "channel(s) [5] would be constant" in bad.reason
    assert out["failed"] == 1
