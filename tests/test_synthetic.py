"""The synthetic MEG generator behind the demo and benchmarks."""

import numpy as np
import pytest

from meg2vec_fairseq.data.meg_dataset import read_manifest
from meg2vec_fairseq.synthetic import (
    SyntheticMEGConfig,
    generate_recording,
    state_blocks,
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


def _reference_generate_recording(seconds, seed, config):
    """The generator exactly as it was before the ``states`` option (a frozen copy), so the
    tests can check that the option, when off, changes nothing."""
    from meg2vec_fairseq.synthetic import (
        _pink_noise,
        _sensor_positions,
        _smooth_patterns,
        event_waveform,
    )

    layout_rng = np.random.default_rng(config.layout_seed)
    positions = _sensor_positions(config.n_channels, layout_rng)
    background_patterns = _smooth_patterns(positions, config.n_background_sources, layout_rng)
    rhythm_patterns = _smooth_patterns(positions, 2, layout_rng)
    event_patterns = _smooth_patterns(positions, config.n_event_kinds, layout_rng)
    rng = np.random.default_rng(seed)
    n_samples = int(round(seconds * config.sfreq))
    t = np.arange(n_samples) / config.sfreq
    data = background_patterns.T @ _pink_noise(config.n_background_sources, n_samples, rng)
    for pattern, freq in zip(rhythm_patterns, (10.0, 20.0)):
        amplitude = 1.0 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6))
        phase = rng.uniform(0, 2 * np.pi)
        if config.rhythm_bandwidth > 0:
            step = np.sqrt(2 * np.pi * config.rhythm_bandwidth / config.sfreq)
            phase = phase + np.cumsum(step * rng.normal(size=n_samples))
        rhythm = config.rhythm_amplitude * amplitude * np.sin(2 * np.pi * freq * t + phase)
        data += np.outer(pattern, rhythm) * np.sqrt(config.n_channels) / 4
    events = []
    n_events = rng.poisson(config.events_per_second * seconds)
    for onset in np.sort(rng.integers(0, max(1, n_samples), size=n_events)):
        kind = int(rng.integers(config.n_event_kinds))
        wave = event_waveform(kind, config.sfreq, config)
        stop = min(n_samples, onset + len(wave))
        gain = config.event_snr * rng.uniform(0.7, 1.3) * np.sqrt(config.n_channels) / 4
        data[:, onset:stop] += np.outer(event_patterns[kind], wave[: stop - onset]) * gain
        events.append((int(onset), kind))
    data += config.sensor_noise * rng.normal(size=data.shape)
    data /= data.std(axis=1, keepdims=True)
    return data.astype(np.float32), events


@pytest.mark.parametrize("kwargs", [{}, {"rhythm_bandwidth": 2.0, "n_channels": 32}])
def test_states_off_leaves_the_output_byte_identical(kwargs):
    config = SyntheticMEGConfig(**kwargs)
    assert config.states is False  # off by default
    for seed in (0, 5):
        data, events = generate_recording(6.0, seed, config)
        explicit, explicit_events = generate_recording(
            6.0, seed, SyntheticMEGConfig(states=False, **kwargs)
        )
        reference, reference_events = _reference_generate_recording(6.0, seed, config)
        assert data.tobytes() == explicit.tobytes() == reference.tobytes()
        assert events == explicit_events == reference_events
    assert state_blocks(6.0, 0, config) == []


def test_states_on_keeps_the_events_and_tiles_the_recording_with_blocks():
    config = SyntheticMEGConfig(states=True)
    _, events = generate_recording(30.0, 3, config)
    _, reference_events = _reference_generate_recording(30.0, 3, SyntheticMEGConfig())
    assert events == reference_events  # own random stream: the event draws do not move
    blocks = state_blocks(30.0, 3, config)
    assert blocks[0][0] == 0 and blocks[-1][1] == 7500
    assert all(a[1] == b[0] and a[2] != b[2] for a, b in zip(blocks, blocks[1:]))
    assert all(750 <= stop - start <= 2000 for start, stop, _ in blocks[:-1])  # 3-8 s
    assert blocks == state_blocks(30.0, 3, config) != state_blocks(30.0, 4, config)


def _band_power(x, low, high, sfreq=250.0):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sfreq)
    return spectrum[(freqs >= low) & (freqs <= high)].mean()


def test_on_blocks_raise_low_frequency_auditory_power_and_suppress_alpha():
    """Paired design check: the same recordings with and without each state effect (the
    recording's own random stream is shared), so the slow alpha amplitude drift of the
    background cannot mask the comparison."""
    from meg2vec_fairseq.synthetic import _auditory_pattern, _sensor_positions, _smooth_patterns

    config = SyntheticMEGConfig(states=True, rhythm_bandwidth=2.0)
    no_alpha_effect = SyntheticMEGConfig(states=True, rhythm_bandwidth=2.0,
                                         state_alpha_suppression=0.0)
    no_states = SyntheticMEGConfig(rhythm_bandwidth=2.0)
    layout = np.random.default_rng(config.layout_seed)
    positions = _sensor_positions(config.n_channels, layout)
    _smooth_patterns(positions, config.n_background_sources, layout)
    alpha_pattern = _smooth_patterns(positions, 2, layout)[0]
    auditory = _auditory_pattern(positions)
    # power[state] = (1-8 Hz auditory ratios, alpha ratios) with / without the effect, per window
    power = {0: ([], []), 1: ([], [])}
    unpaired = {0: [], 1: []}
    for seed in range(3):
        data, _ = generate_recording(30.0, seed, config)
        without_states, _ = generate_recording(30.0, seed, no_states)
        without_alpha, _ = generate_recording(30.0, seed, no_alpha_effect)
        for start, stop, state in state_blocks(30.0, seed, config):
            for a in range(start + 125, stop - 375, 250):  # 1-s windows away from the ramps
                window = slice(a, a + 250)
                low = _band_power(auditory @ data[:, window], 1, 8)
                low_without = _band_power(auditory @ without_states[:, window], 1, 8)
                alpha = _band_power(alpha_pattern @ data[:, window], 8, 12)
                alpha_without = _band_power(alpha_pattern @ without_alpha[:, window], 8, 12)
                power[state][0].append(low / low_without)
                power[state][1].append(alpha / alpha_without)
                unpaired[state].append(low)
    assert np.median(power[1][0]) > 1.2 * np.median(power[0][0])  # 1-8 Hz auditory response
    assert np.median(power[1][1]) < 0.85 * np.median(power[0][1])  # alpha desynchronisation
    assert np.mean(unpaired[1]) > np.mean(unpaired[0])  # visible without the pairing too


def test_dataset_writes_states_tsv_only_when_states_are_on(tmp_path):
    write_synthetic_dataset(str(tmp_path / "off"), n_recordings=2, seconds_per_recording=10,
                            n_valid_recordings=1)
    assert not (tmp_path / "off" / "states.tsv").exists()
    config = SyntheticMEGConfig(states=True, n_channels=16)
    write_synthetic_dataset(str(tmp_path / "on"), n_recordings=2, seconds_per_recording=10,
                            n_valid_recordings=1, config=config)
    rows = (tmp_path / "on" / "states.tsv").read_text().splitlines()
    assert rows[0] == "segment\tstart_s\tend_s\tstate"
    parsed = [row.split("\t") for row in rows[1:]]
    assert {state for *_, state in parsed} <= {"on", "off"}
    for segment in {row[0] for row in parsed}:  # each segment is tiled 0..5 s
        spans = [(float(a), float(b)) for s, a, b, _ in parsed if s == segment]
        assert spans[0][0] == 0.0 and spans[-1][1] == 5.0
        assert all(x[1] == y[0] for x, y in zip(spans, spans[1:]))


@pytest.mark.parametrize("field, value", [("state_alpha_suppression", 1.5),
                                          ("state_alpha_suppression", -0.1),
                                          ("state_response", -0.05),
                                          ("state_broadband", -1.0)])
def test_impossible_state_settings_name_the_field(field, value):
    config = SyntheticMEGConfig(states=True, **{field: value})
    with pytest.raises(ValueError, match=f"{field}={value}"):
        generate_recording(10.0, 0, config)
