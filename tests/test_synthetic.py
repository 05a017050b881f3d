"""The synthetic MEG generator behind the demo and benchmarks."""

import numpy as np
import pytest

from meg2vec_fairseq.data.meg_dataset import read_manifest
from meg2vec_fairseq.synthetic import (
    SyntheticMEGConfig,
    generate_recording,
    write_synthetic_dataset,
)


@pytest.mark.parametrize("channels", [3, 16, 306])
def test_recordings_are_finite_unit_variance_for_any_channel_count(channels):
    data, events = generate_recording(8.0, seed=0, config=SyntheticMEGConfig(n_channels=channels))
    assert data.shape == (channels, 2000) and data.dtype == np.float32
    assert np.isfinite(data).all()
    np.testing.assert_allclose(data.std(axis=1), 1.0, rtol=1e-3)
    assert events and all(0 <= onset < 2000 and 0 <= kind < 4 for onset, kind in events)


def test_neighbouring_channels_are_correlated():
    data, _ = generate_recording(20.0, seed=1)
    corr = np.corrcoef(data)
    assert np.abs(corr[np.triu_indices(306, 1)]).mean() > 0.1  # spatially mixed sources


def test_dataset_splits_by_recording_and_lists_events(tmp_path):
    counts = write_synthetic_dataset(
        str(tmp_path), n_recordings=3, seconds_per_recording=10, n_valid_recordings=1
    )
    assert counts == {"train": 4, "valid": 2}
    _, train_rows, _ = read_manifest(str(tmp_path / "train.tsv"), 306)
    _, valid_rows, _ = read_manifest(str(tmp_path / "valid.tsv"), 306)
    assert {r.relative_path.split("/")[1] for r in valid_rows} == {"rec-002"}
    assert "rec-002" not in {r.relative_path.split("/")[1] for r in train_rows}
    events = (tmp_path / "events.tsv").read_text().splitlines()
    assert events[0] == "segment\tonset_sample\tkind" and len(events) > 1
