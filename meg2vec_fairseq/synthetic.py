"""Synthetic MEG-like recordings with known structure, for demos, tests and benchmarks.

Each recording is a sum of

* a 1/f ("pink") background from a few dozen latent sources,
* alpha (~10 Hz) and beta (~20 Hz) rhythms with slowly varying amplitude,
* transient events of a few kinds, each kind with its own spatial pattern and time course,
  at random onsets,
* optionally (``SyntheticMEGConfig.states``) sustained "listening" states: blocks of a few
  seconds alternating on/off, during which a bilateral auditory-like source carries a 1-8 Hz
  band-limited response plus a little broadband power and the alpha rhythm is suppressed
  (the statistics that LibriBrain speech-vs-silence detection relies on),
* a little independent sensor noise,

projected to sensors through smooth spatial patterns over sensor positions on a sphere, so
neighbouring channels are correlated as in real MEG. The event onsets and kinds (and the
state blocks, :func:`state_blocks`) are returned, so downstream probes have ground-truth labels.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .constants import N_SENSORS, SFREQ
from .io.atomic import atomic_save_npy
from .io.manifest import write_manifest

#: Frequencies (Hz) of the alpha and beta rhythms.
RHYTHM_FREQUENCIES: Tuple[float, float] = (10.0, 20.0)

#: Event kinds: (duration in s, carrier frequency in Hz or 0 for an evoked-like waveform).
EVENT_KINDS: Tuple[Tuple[float, float], ...] = (
    (0.30, 0.0),  # slow evoked deflection (M100/M200-like)
    (0.20, 0.0),  # faster biphasic evoked response
    (0.40, 12.0),  # spindle-like burst
    (0.30, 25.0),  # beta burst
)


@dataclass
class SyntheticMEGConfig:
    """Parameters of the synthetic generator (defaults: LibriBrain-like 306 x 250 Hz)."""

    n_channels: int = N_SENSORS
    sfreq: float = SFREQ
    n_background_sources: int = 32
    n_event_kinds: int = 4
    events_per_second: float = 0.8
    event_snr: float = 2.0
    sensor_noise: float = 0.1
    rhythm_amplitude: float = 0.6
    layout_seed: int = 1234  # fixes sensor positions and event patterns across recordings
    #: Line width (Hz) of the alpha/beta rhythms: 0 (default) gives pure sinusoids of constant
    #: phase; > 0 lets the phase diffuse (a Lorentzian peak of that width, as real rhythms
    #: have), so a rhythm's phase is not predictable far ahead.
    rhythm_bandwidth: float = 0.0
    event_kinds: Tuple[Tuple[float, float], ...] = field(default=EVENT_KINDS)
    #: Sustained on/off states (listening vs silence). False (default) leaves the output
    #: byte-identical to a generator without this option: the states draw from their own
    #: random stream (:func:`state_blocks`), never from the recording's.
    states: bool = False
    #: Range (s) of the uniformly drawn block lengths; the first block's state is random.
    state_block_seconds: Tuple[float, float] = (3.0, 8.0)
    #: Pass band (Hz) of the sustained "envelope-tracking" response during "on" blocks.
    state_band: Tuple[float, float] = (1.0, 8.0)
    #: Amplitude of that response, in the units of ``event_snr`` (the auditory pattern times a
    #: unit-variance source times this, like an event's gain). Small on purpose: at 0.05 the
    #: 1-8 Hz power through the auditory pattern rises ~1.5-2x (the in-band background is
    #: strong), at most sensors much less, and a raw-sensor linear probe of 1-s windows is
    #: ~0.8-0.95 balanced accuracy rather than 1.0 (0.35 made it trivial).
    state_response: float = 0.05
    #: Extra broadband (white) power through the same auditory pattern during "on", same units.
    state_broadband: float = 0.02
    #: Fraction by which the alpha (10 Hz) rhythm's amplitude drops during "on" (alpha
    #: desynchronisation, ~28 % less alpha power); it acts in the alpha rhythm's own topography.
    state_alpha_suppression: float = 0.15
    #: Raised-cosine ramp (s) between states, so the switch has no step artefact.
    state_ramp_seconds: float = 0.25


def _sensor_positions(n_channels: int, rng: np.random.Generator) -> np.ndarray:
    """Points spread over the upper half of a unit sphere (a helmet)."""
    xyz = rng.normal(size=(n_channels, 3))
    xyz[:, 2] = np.abs(xyz[:, 2])
    return xyz / np.linalg.norm(xyz, axis=1, keepdims=True)


def _smooth_patterns(positions: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, channels)`` spatially smooth topographies centred on random points."""
    centres = _sensor_positions(n, rng)
    widths = rng.uniform(0.3, 0.7, size=(n, 1))
    distances = np.linalg.norm(positions[None, :, :] - centres[:, None, :], axis=-1)
    signs = np.where(positions[None, :, 0] > centres[:, None, 0], 1.0, -1.0)  # dipolar
    bumps = np.exp(-((distances / widths) ** 2))
    patterns = bumps * (0.5 + 0.5 * signs)  # one-sided dipole: zero on one side of the centre
    # With few sensors every sensor can fall on the zero side: keep the plain bump then.
    empty = ~patterns.any(axis=1)
    patterns[empty] = bumps[empty]
    return patterns / np.linalg.norm(patterns, axis=1, keepdims=True)


def _auditory_pattern(positions: np.ndarray) -> np.ndarray:
    """Bilateral temporal-lobe-like topography: two lateral bumps, opposite polarity front/back.

    Deterministic (no random draws), so enabling the states leaves the layout stream intact.
    """
    pattern = np.zeros(len(positions))
    for side in (-1.0, 1.0):
        centre = np.array([side * 0.9, 0.0, 0.35])
        centre /= np.linalg.norm(centre)
        distance = np.linalg.norm(positions - centre, axis=1)
        polarity = np.where(positions[:, 1] >= 0, 1.0, -0.6)  # dipole-like sign flip
        pattern += np.exp(-((distance / 0.5) ** 2)) * polarity
    if not pattern.any():  # pragma: no cover - only for degenerate layouts
        pattern[:] = 1.0
    return pattern / np.linalg.norm(pattern)


def _state_rng(seed: int, layout_seed: int, stream: int) -> np.random.Generator:
    # Streams of their own (keyed by both seeds, a constant and the stream number: 0 blocks,
    # 1 signals), independent of the recording's ``default_rng(seed)``.
    return np.random.default_rng([int(seed), int(layout_seed), 0x5747E, stream])


def state_blocks(
    seconds: float, seed: int, config: Optional[SyntheticMEGConfig] = None
) -> List[Tuple[int, int, int]]:
    """The on/off blocks of recording ``seed``: ``(start_sample, end_sample, state)``.

    ``state`` is 1 ("on", listening) or 0 ("off"); blocks alternate, tile the recording, and
    have uniform random lengths in ``config.state_block_seconds`` (the last one is cut at the
    end). Empty when ``config.states`` is False. Drawn from the state stream, so this is
    exactly what :func:`generate_recording` used.
    """
    config = config or SyntheticMEGConfig()
    if not config.states:
        return []
    low, high = config.state_block_seconds
    if not 0 < low <= high:
        raise ValueError(f"state_block_seconds must be 0 < low <= high, got {(low, high)}")
    rng = _state_rng(seed, config.layout_seed, 0)
    n_samples = int(round(seconds * config.sfreq))
    state = int(rng.integers(2))
    blocks: List[Tuple[int, int, int]] = []
    start = 0
    while start < n_samples:
        stop = min(n_samples, start + int(round(rng.uniform(low, high) * config.sfreq)))
        blocks.append((start, stop, state))
        start, state = stop, 1 - state
    return blocks


def _state_signals(
    n_samples: int, seed: int, config: SyntheticMEGConfig
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(on, response, broadband)``: the smooth 0..1 "on" indicator and the two unit-variance
    source time courses (band-limited, white) that the auditory pattern carries when on."""
    if not 0.0 <= config.state_alpha_suppression <= 1.0:
        raise ValueError(f"state_alpha_suppression={config.state_alpha_suppression} must be in "
                         "[0, 1] (a fraction of the alpha amplitude)")
    for name in ("state_response", "state_broadband"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name}={getattr(config, name)} must be >= 0")
    seconds = n_samples / config.sfreq
    on = np.zeros(n_samples)
    for start, stop, state in state_blocks(seconds, seed, config):
        on[start:stop] = state
    ramp = int(round(config.state_ramp_seconds * config.sfreq))
    if ramp > 1:  # smooth with a raised-cosine kernel of the ramp's length
        kernel = np.hanning(ramp + 2)[1:-1]
        on = np.convolve(np.pad(on, ramp, mode="edge"), kernel / kernel.sum(), "same")
        on = on[ramp:-ramp]
    rng = _state_rng(seed, config.layout_seed, 1)
    spectrum = np.fft.rfft(rng.normal(size=n_samples))
    freqs = np.fft.rfftfreq(n_samples, 1.0 / config.sfreq)
    low, high = config.state_band
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    response = np.fft.irfft(spectrum, n=n_samples)
    response /= max(response.std(), 1e-12)
    broadband = rng.normal(size=n_samples)
    return on, response, broadband


def _pink_noise(n_sources: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(size=(n_sources, n_samples)), axis=1)
    freqs = np.arange(spectrum.shape[1], dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=n_samples, axis=1)
    return noise / noise.std(axis=1, keepdims=True)


def event_waveform(kind: int, sfreq: float, config: SyntheticMEGConfig) -> np.ndarray:
    """Time course of one event of ``kind`` (unit peak amplitude)."""
    duration, carrier = config.event_kinds[kind % len(config.event_kinds)]
    t = np.arange(int(round(duration * sfreq))) / sfreq
    envelope = np.sin(np.pi * t / duration) ** 2
    if carrier > 0:
        wave = envelope * np.sin(2 * np.pi * carrier * t)
    elif kind % 2 == 0:
        wave = envelope
    else:
        wave = envelope * np.sin(2 * np.pi * t / duration)  # biphasic
    return wave / np.abs(wave).max()


def generate_recording(
    seconds: float, seed: int, config: Optional[SyntheticMEGConfig] = None
) -> Tuple[np.ndarray, List[Tuple[int, int]]]:
    """Generate one synthetic MEG recording.

    Parameters
    ----------
    seconds : float
        Duration.
    seed : int
        Seed of this recording's background, rhythms and event onsets.
    config : SyntheticMEGConfig or None
        Generator parameters; sensor layout and event patterns depend only on
        ``config.layout_seed``, so they are shared by all recordings.

    Returns
    -------
    data : ndarray, shape (n_channels, n_samples), float32
        The recording, roughly unit variance per channel.
    events : list of (onset_sample, kind)
        Event onsets (in samples) and kinds.

    Notes
    -----
    With ``config.states`` the on/off blocks are :func:`state_blocks` ``(seconds, seed,
    config)``; without it the output is exactly that of the generator before the option existed.
    """
    config = config or SyntheticMEGConfig()
    layout_rng = np.random.default_rng(config.layout_seed)
    positions = _sensor_positions(config.n_channels, layout_rng)
    background_patterns = _smooth_patterns(positions, config.n_background_sources, layout_rng)
    rhythm_patterns = _smooth_patterns(positions, 2, layout_rng)
    event_patterns = _smooth_patterns(positions, config.n_event_kinds, layout_rng)

    rng = np.random.default_rng(seed)
    n_samples = int(round(seconds * config.sfreq))
    t = np.arange(n_samples) / config.sfreq
    data = background_patterns.T @ _pink_noise(config.n_background_sources, n_samples, rng)
    if config.states:
        on, response, broadband = _state_signals(n_samples, seed, config)

    for pattern, freq in zip(rhythm_patterns, RHYTHM_FREQUENCIES):
        amplitude = 1.0 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6))
        phase = rng.uniform(0, 2 * np.pi)
        if config.rhythm_bandwidth > 0:  # phase diffusion: Lorentzian line of this width
            step = np.sqrt(2 * np.pi * config.rhythm_bandwidth / config.sfreq)
            phase = phase + np.cumsum(step * rng.normal(size=n_samples))
        rhythm = config.rhythm_amplitude * amplitude * np.sin(2 * np.pi * freq * t + phase)
        # alpha desynchronisation while listening
        if config.states and freq == RHYTHM_FREQUENCIES[0]:
            rhythm = rhythm * (1.0 - config.state_alpha_suppression * on)
        data += np.outer(pattern, rhythm) * np.sqrt(config.n_channels) / 4

    if config.states:  # sustained auditory response, same gain convention as the events
        source = on * (config.state_response * response + config.state_broadband * broadband)
        data += np.outer(_auditory_pattern(positions), source) * np.sqrt(config.n_channels) / 4

    events: List[Tuple[int, int]] = []
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


def write_synthetic_dataset(
    dest: str,
    n_recordings: int = 12,
    seconds_per_recording: float = 40.0,
    segment_seconds: float = 5.0,
    n_valid_recordings: int = 2,
    seed: int = 0,
    config: Optional[SyntheticMEGConfig] = None,
    dtype: str = "float32",
) -> Dict[str, int]:
    """Write synthetic recordings as ``.npy`` segments plus fairseq TSV manifests.

    Layout of ``dest``: ``segments/rec-XXX/seg-YYYY.npy``, ``train.tsv`` and ``valid.tsv``
    (split by recording: the last ``n_valid_recordings`` go to valid) and ``events.tsv``
    (one row per event: ``segment``, ``onset_sample`` within the segment, ``kind``). With
    ``config.states`` also ``states.tsv``: one row per state block cut at segment boundaries
    (``segment``, ``start_s``, ``end_s`` in seconds from the segment's start, ``state``
    ``on``/``off``).

    Parameters
    ----------
    dest : str
        Output directory (created).
    n_recordings, seconds_per_recording, segment_seconds : int, float, float
        How much data to write and how to cut it.
    n_valid_recordings : int
        Recordings that go to ``valid.tsv``.
    seed : int
        Base seed; recording ``i`` uses ``seed + i``.
    config : SyntheticMEGConfig or None
        Generator parameters.
    dtype : str
        ``"float32"`` or ``"float16"``.

    Returns
    -------
    dict
        Number of segments written per split.
    """
    if not 0 <= n_valid_recordings < n_recordings:
        raise ValueError("need 0 <= n_valid_recordings < n_recordings")
    config = config or SyntheticMEGConfig()
    dest = os.path.abspath(dest)
    segment_samples = int(round(segment_seconds * config.sfreq))
    rows: Dict[str, List[Tuple[str, int]]] = {"train": [], "valid": []}
    event_rows: List[Tuple[str, int, int]] = []
    state_rows: List[Tuple[str, str, str, str]] = []
    for recording in range(n_recordings):
        split = "valid" if recording >= n_recordings - n_valid_recordings else "train"
        data, events = generate_recording(seconds_per_recording, seed + recording, config)
        blocks = state_blocks(seconds_per_recording, seed + recording, config)
        recording_dir = os.path.join(dest, "segments", f"rec-{recording:03d}")
        os.makedirs(recording_dir, exist_ok=True)
        for index in range(data.shape[1] // segment_samples):
            start = index * segment_samples
            relative = f"segments/rec-{recording:03d}/seg-{index:04d}.npy"
            segment = data[:, start : start + segment_samples].astype(dtype)
            atomic_save_npy(os.path.join(dest, relative), segment, fsync=False)
            rows[split].append((relative, segment_samples))
            for onset, kind in events:
                if start <= onset < start + segment_samples:
                    event_rows.append((relative, onset - start, kind))
            for a, b, state in blocks:
                a, b = max(a, start), min(b, start + segment_samples)
                if a < b:
                    state_rows.append((relative, f"{(a - start) / config.sfreq:.4f}",
                                       f"{(b - start) / config.sfreq:.4f}",
                                       "on" if state else "off"))
    for split, lines in rows.items():  # manifests last, so they never list a missing segment
        write_manifest(os.path.join(dest, f"{split}.tsv"), dest, lines)
    with open(os.path.join(dest, "events.tsv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["segment", "onset_sample", "kind"])
        writer.writerows(event_rows)
    if config.states:
        with open(os.path.join(dest, "states.tsv"), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(["segment", "start_s", "end_s", "state"])
            writer.writerows(state_rows)
    return {split: len(lines) for split, lines in rows.items()}
