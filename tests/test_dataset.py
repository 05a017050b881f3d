"""The meg_pretraining dataset: manifest checks, bad input, cropping, padding, normalisation."""

import numpy as np
import pytest
import torch
from meg_fixtures import random_segments, write_manifest

from meg2vec_fairseq.data.meg_dataset import MegDataError, MegNpyDataset


def load(manifest, **kwargs):
    options = dict(sample_rate=250, in_channels=306, max_sample_size=1000, min_sample_size=100)
    options.update(kwargs)
    return MegNpyDataset(str(manifest), **options)


def test_reads_a_random_crop_of_the_segment(tmp_path):
    segment = np.arange(306 * 1250, dtype=np.float32).reshape(306, 1250)  # unique values
    dataset = load(write_manifest(tmp_path, [segment]))
    starts = set()
    for _ in range(20):
        source = dataset[0]["source"]
        assert source.shape == (306, 1000)
        start = int(source[0, 0])
        np.testing.assert_array_equal(source.numpy(), segment[:, start : start + 1000])
        starts.add(start)
    assert len(starts) > 1  # random, not always the same crop


def test_float16_segments_are_read_as_float32(tmp_path):
    segment = random_segments(1, samples=500)[0].astype(np.float16)
    source = load(write_manifest(tmp_path, [segment]))[0]["source"]
    assert source.dtype == torch.float32
    np.testing.assert_array_equal(source.numpy(), segment.astype(np.float32))


def test_short_rows_are_skipped_and_sizes_kept(tmp_path):
    segments = random_segments(3, samples=400) + random_segments(1, samples=50)
    dataset = load(write_manifest(tmp_path, segments))
    assert len(dataset) == 3 and dataset.sizes.tolist() == [400, 400, 400]


def test_collater_crops_to_the_shortest_without_padding(tmp_path):
    lengths = [1250, 700, 900]
    segments = [random_segments(1, samples=n, seed=n)[0] for n in lengths]
    dataset = load(write_manifest(tmp_path, segments))
    batch = dataset.collater([dataset[i] for i in range(3)])
    assert batch["net_input"]["source"].shape == (3, 306, 700)
    assert "padding_mask" not in batch["net_input"]
    assert batch["id"].tolist() == [0, 1, 2]


def test_collater_pads_with_a_time_padding_mask(tmp_path):
    lengths = [1250, 700, 900]
    segments = [random_segments(1, samples=n, seed=n)[0] for n in lengths]
    dataset = load(write_manifest(tmp_path, segments), pad=True)
    batch = dataset.collater([dataset[i] for i in range(3)])
    source, padding_mask = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
    assert source.shape == (3, 306, 1000) and padding_mask.shape == (3, 1000)
    assert (~padding_mask).sum(dim=1).tolist() == [1000, 700, 900]
    assert source[1, :, 700:].abs().sum() == 0
    torch.testing.assert_close(source[1, :, :700], torch.from_numpy(segments[1]))


def test_bucketing_pads_to_bucket_sizes(tmp_path):
    lengths = [300, 500, 700, 900, 1100, 1250]
    segments = [random_segments(1, samples=n, seed=n)[0] for n in lengths]
    dataset = load(write_manifest(tmp_path, segments), pad=True, num_buckets=2)
    batch = dataset.collater([dataset[0], dataset[1]])
    bucket = max(dataset._bucketed_sizes[0], dataset._bucketed_sizes[1])
    assert batch["net_input"]["source"].shape[-1] == bucket
    assert batch["net_input"]["padding_mask"][:, 500:].all()


def test_batching_keeps_a_last_batch_that_is_not_a_multiple_of_eight(tmp_path):
    dataset = load(write_manifest(tmp_path, random_segments(13, samples=500)))
    batches = dataset.batch_by_size(
        dataset.ordered_indices(), max_tokens=4000, required_batch_size_multiple=8
    )
    assert [len(b) for b in batches] == [8, 5]
    assert sorted(np.concatenate(batches).tolist()) == list(range(13))


def test_per_channel_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    segment = (rng.standard_normal((306, 600)) * 5 + 3).astype(np.float32)
    segment[7] = 0.0  # a zeroed (flat or padded) channel must stay zero, not NaN
    source = load(write_manifest(tmp_path, [segment]), normalize=True)[0]["source"]
    live = np.delete(np.arange(306), 7)
    np.testing.assert_allclose(source[live].mean(dim=1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(source[live].std(dim=1).numpy(), 1, atol=1e-4)
    assert torch.isfinite(source).all() and source[7].abs().sum() == 0


# --- bad input: each names the file (and manifest row) and what is wrong ----------------------


def test_nan_segment_is_refused_when_read(tmp_path):
    segments = random_segments(2)
    segments[1][5, 123] = np.nan
    dataset = load(write_manifest(tmp_path, segments), max_sample_size=None)
    dataset[0]
    expected = r"line 3 .*train-001\.npy.*NaN/inf.*channel 5, sample 123"
    with pytest.raises(MegDataError, match=expected):
        dataset[1]


def test_inf_segment_is_refused(tmp_path):
    segments = random_segments(1)
    segments[0][0, 0] = np.inf
    with pytest.raises(MegDataError, match="train-000.npy.*NaN/inf"):
        load(write_manifest(tmp_path, segments), max_sample_size=None)[0]


def test_wrong_channel_count_is_refused_at_load(tmp_path):
    segments = random_segments(1) + random_segments(1, channels=300)
    expected = r"line 3: .*train-001\.npy: 300 channels.*in_channels=306"
    with pytest.raises(MegDataError, match=expected):
        load(write_manifest(tmp_path, segments))


def test_truncated_npy_is_refused_at_load(tmp_path):
    manifest = write_manifest(tmp_path, random_segments(2))
    path = tmp_path / "train-001.npy"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(MegDataError, match=r"line 3: .*train-001\.npy: truncated file"):
        load(manifest)


def test_object_array_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path, random_segments(1))
    np.save(tmp_path / "train-000.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    monkeypatch.setattr("pickle.load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(MegDataError, match=r"train-000\.npy: holds a Python-object array"):
        load(manifest)


def test_not_an_npy_file_is_refused(tmp_path):
    manifest = write_manifest(tmp_path, random_segments(1))
    (tmp_path / "train-000.npy").write_bytes(b"garbage, not numpy")
    with pytest.raises(MegDataError, match=r"train-000\.npy: not a readable \.npy file"):
        load(manifest)


def test_missing_file_is_refused_at_load(tmp_path):
    manifest = write_manifest(tmp_path, random_segments(2))
    (tmp_path / "train-000.npy").unlink()
    with pytest.raises(MegDataError, match=r"line 2: .*train-000\.npy: file does not exist"):
        load(manifest)


def test_length_disagreeing_with_the_file_is_refused(tmp_path):
    manifest = write_manifest(tmp_path, random_segments(2), lengths=[1250, 1300])
    expected = r"line 3: .*holds 1250 time samples.*manifest says 1300"
    with pytest.raises(MegDataError, match=expected):
        load(manifest)


@pytest.mark.parametrize("content", ["", "\n", "/some/root\n"])
def test_empty_manifest_is_refused(tmp_path, content):
    manifest = tmp_path / "train.tsv"
    manifest.write_text(content)
    with pytest.raises(MegDataError, match=r"train\.tsv: empty manifest"):
        load(manifest)


def test_malformed_row_is_refused(tmp_path):
    manifest = write_manifest(tmp_path, random_segments(1))
    manifest.write_text(manifest.read_text() + "no-tab-here.npy 1250\n")
    with pytest.raises(MegDataError, match=r"line 3: expected 'path<TAB>num_samples'"):
        load(manifest)


def test_missing_manifest_is_refused(tmp_path):
    with pytest.raises(MegDataError, match=r"valid\.tsv: manifest does not exist"):
        load(tmp_path / "valid.tsv")


def test_absurd_finite_values_are_refused_naming_the_row_and_file(tmp_path):
    segments = random_segments(3, samples=400)
    segments[1][:] = 1e30  # finite, passes the NaN/inf check, would overflow the gradients
    dataset = load(write_manifest(tmp_path, segments), max_abs_value=1000.0)
    dataset[0]
    with pytest.raises(MegDataError, match=r"train.tsv, line 3 \(.*train-001.npy\): 122400 "
                       r"values beyond \+-1000 \(largest \|x\| 1e\+30\)"):
        dataset[1]
    # 0 or None disables the check
    assert load(write_manifest(tmp_path, segments), max_abs_value=0)[1]["source"].shape[1] == 400
    with pytest.raises(MegDataError, match="max_abs_value must be a finite number >= 0"):
        load(write_manifest(tmp_path, segments), max_abs_value=float("nan"))


def test_task_default_bound_leaves_z_scored_data_alone(tmp_path):
    from meg2vec_fairseq.constants import MAX_ABS_VALUE

    segment = random_segments(1, samples=400)[0] * 30  # 30-sigma excursions
    dataset = load(write_manifest(tmp_path, [segment]), max_abs_value=MAX_ABS_VALUE)
    assert dataset[0]["source"].shape == (306, 400)


def test_duplicate_rows_warn(tmp_path, caplog):
    manifest = write_manifest(tmp_path, random_segments(2, samples=400))
    manifest.write_text(manifest.read_text() + "train-000.npy\t400\n")
    with caplog.at_level("WARNING"):
        dataset = load(manifest)
    assert len(dataset) == 3
    assert "line 4: train-000.npy is listed again (first at line 2)" in caplog.text


def test_fifo_segment_and_empty_valid_are_named(tmp_path):
    import os

    manifest = write_manifest(tmp_path, random_segments(1, samples=400))
    os.remove(tmp_path / "train-000.npy")
    os.mkfifo(tmp_path / "train-000.npy")
    with pytest.raises(MegDataError, match=r"train-000.npy: file is a FIFO \(named pipe\)"):
        load(manifest)
    valid = tmp_path / "valid.tsv"
    valid.write_text(f"{tmp_path}\n")
    with pytest.raises(MegDataError, match="dataset.disable_validation=true"):
        load(valid)
