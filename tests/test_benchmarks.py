"""The benchmark scripts run as their docs say (a subprocess, tiny sizes, CPU)."""

import argparse
import csv
import json
import os
import re
import sys

import numpy as np
import pytest
from meg_fixtures import run_command


@pytest.mark.slow
def test_gpu_step_smoke_on_cpu(tmp_path):
    """``benchmarks/gpu_step.py`` at a tiny size: positive FLOPs, step time, MFU."""
    out = tmp_path / "gpu_step.json"
    # fmt: off
    result = run_command(
        [
            sys.executable, "benchmarks/gpu_step.py", "--config", "meg2vec_tiny",
            "--batches", "2", "--samples", "500", "--steps", "2", "--warmup", "1",
            "--dtype", "float32", "--peak-tflops", "1", "--device", "cpu", "--threads", "1",
            "--json", str(out),
        ],
        timeout=120,
    )
    # fmt: on
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["config"] == "meg2vec_tiny" and report["peak_tflops"] == 1
    (row,) = report["settings"]
    assert "error" not in row, row
    assert row["batch"] == 2 and row["dtype"] == "float32" and not row["compile"]
    assert row["flops_per_step"] > 0 and row["step_ms"] > 0
    assert row["mfu"] > 0 and row["segments_per_s"] > 0
    assert "MFU %" in result.stdout


def _tiny_probe_data(tmp_path):
    """A probe_synthetic data directory at a tiny size (2 + 5 recordings of 12 s)."""
    import argparse

    sys.path.insert(0, "benchmarks")
    import probe_synthetic

    args = argparse.Namespace(
        data_dir=str(tmp_path / "data"), pretrain_recordings=3, probe_recordings=5,
        seconds=12.0, event_snr=2.0, rhythm_bandwidth=2.0, generator_seed=1234,
        state_alpha_suppression=0.15, state_response=0.05, window=0.5, state_window=1.0,
        context=1.0,
    )
    return probe_synthetic.prepare_data(args)["dir"]


def test_spatial_probe_whitening_equalises_the_sensor_covariance():
    """``spatial_probe.whitening``: at a tiny shrinkage the whitened sensors' covariance is the
    identity; a shrinkage presses strong directions to about 1 and keeps weak ones below."""
    sys.path.insert(0, "benchmarks")
    import spatial_probe

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(5, 5)) * np.array([10.0, 3.0, 1.0, 0.3, 0.1])
    data = mixing @ rng.normal(size=(5, 20000))
    covariance = np.cov(data)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    axes = (eigenvalues[::-1], eigenvectors[:, ::-1])
    white = spatial_probe.whitening(axes, 1e-9)
    np.testing.assert_allclose(white @ covariance @ white, np.eye(5), atol=1e-5)
    shrunk = np.linalg.eigvalsh(spatial_probe.whitening(axes, 1.0) @ covariance
                                @ spatial_probe.whitening(axes, 1.0))[::-1]
    expected = axes[0] / (axes[0] + axes[0].mean())
    np.testing.assert_allclose(shrunk, expected, rtol=1e-6)
    assert shrunk[0] > 0.5 > 50 * shrunk[-1]


@pytest.mark.slow
def test_spatial_probe_runs_every_view(tmp_path):
    """``benchmarks/spatial_probe.py``: one row per view, scores in [0, 1], JSON written;
    a directory without probe data is a one-line error naming it."""
    data = _tiny_probe_data(tmp_path)
    out = tmp_path / "spatial.json"
    result = run_command(
        [sys.executable, "benchmarks/spatial_probe.py", "--data", data, "--task", "state",
         "--pca", "4", "--dim", "8", "--pca-files", "3", "--seeds", "0", "--frame-views",
         "--power-bands", "all", "8-13", "--power-pca", "4", "--power-baseline",
         "--power-pca-mean", "--power-whiten", "0.5", "--json", str(out)],
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    names = [source["name"] for source in report["sources"]]
    assert names == ["raw", "raw z-scored per window", "random rotation",
                     "random projection 8", "PCA 4", "conv1 of meg2vec_tiny", "frame mean",
                     "frame mean + log power", "PCA 4 frame mean + log power",
                     "frame log power, random projection 8",
                     "frame log power in all, 8-13 Hz, random projection 8",
                     "frame log power, top 4 axes of its own",
                     "frame log power change, top 4 axes of its own",
                     "frame mean + log power, top 4 axes of its own",
                     "frame mean + log power change, top 4 axes of its own",
                     "whitened (0.5) frame log power, top 4 axes of its own",
                     "whitened (0.5) frame log power change, top 4 axes of its own",
                     "whitened (0.5) frame mean + log power, top 4 axes of its own",
                     "whitened (0.5) frame mean + log power change, top 4 axes of its own"]
    # meg2vec_tiny's frames: 60 samples every 10; mean (+ log variance) per sensor or component
    frame_rows = {s["name"]: s for s in report["sources"][-13:]}
    assert frame_rows["frame mean"]["source"]["receptive_field"] == 60
    assert frame_rows["frame mean"]["source"]["stride"] == 10
    n_sensors = report["sources"][0]["feature_dim"] // 2
    assert frame_rows["frame mean"]["feature_dim"] == 2 * n_sensors
    assert frame_rows["frame mean + log power"]["feature_dim"] == 4 * n_sensors
    assert frame_rows["PCA 4 frame mean + log power"]["feature_dim"] == 4 * 4
    # each sensor's log power first, then mixed into --dim features (pooled: mean and std)
    assert frame_rows["frame log power, random projection 8"]["feature_dim"] == 2 * 8
    banded = frame_rows["frame log power in all, 8-13 Hz, random projection 8"]
    assert banded["feature_dim"] == 2 * 8
    assert banded["source"]["receptive_field"] == 60
    for name in ("frame log power, top 4 axes of its own",
                 "frame log power change, top 4 axes of its own",
                 "frame mean + log power, top 4 axes of its own",
                 "whitened (0.5) frame mean + log power, top 4 axes of its own"):
        assert frame_rows[name]["feature_dim"] == 2 * 4
    assert all(0 <= s["macro_f1"]["mean"] <= 1 for s in report["sources"])
    assert 0 < report["pca_variance_share"]["4"] <= 1
    assert "PCA 4" in result.stdout
    above_nyquist = run_command(
        [sys.executable, "benchmarks/spatial_probe.py", "--data", data, "--frame-views",
         "--power-bands", "100-200"], timeout=60)
    assert above_nyquist.returncode == 2 and "'100-200'" in above_nyquist.stderr
    assert "Nyquist" in above_nyquist.stderr
    for whiten in (["--power-whiten", "0"], ["--power-whiten", "1"]):  # bad value; no --power-pca
        refused = run_command([sys.executable, "benchmarks/spatial_probe.py", "--data", data,
                               *whiten] + (["--power-pca", "4"] if whiten[1] == "0" else []),
                              timeout=60)
        assert refused.returncode == 2 and "--power-whiten" in refused.stderr
    missing = run_command([sys.executable, "benchmarks/spatial_probe.py", "--data",
                           str(tmp_path)], timeout=60)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert str(tmp_path) in missing.stderr


def test_mixed_band_power_takes_each_sensors_power_in_each_band():
    """``spatial_probe.MixedFramePower`` with bands: a 10-Hz sensor keeps its power in 8-13 Hz
    and loses it in 20-30 Hz; a 25-Hz sensor the other way round; unfiltered keeps both."""
    sys.path.insert(0, "benchmarks")
    import spatial_probe

    t = np.arange(500) / spatial_probe.SFREQ
    windows = np.stack([np.sin(2 * np.pi * 10 * t), np.sin(2 * np.pi * 25 * t)])[None]
    bands = [None, (8.0, 13.0), (20.0, 30.0)]
    # identity mix: the features are the 2 sensors' log powers, band after band
    view = spatial_probe.MixedFramePower("bands", 60, 10, np.eye(6), bands=bands)
    frames, centres = view.frames(windows)
    assert frames.shape == (1, (500 - 60) // 10 + 1, 6) and len(centres) == frames.shape[1]
    middle = frames[0, 10:-10].mean(axis=0)  # away from the filters' edges
    unfiltered, alpha, beta = middle[:2], middle[2:4], middle[4:]
    np.testing.assert_allclose(unfiltered, np.log(0.5), atol=0.05)  # a unit sine's variance
    assert abs(alpha[0] - unfiltered[0]) < 0.2 and alpha[1] < unfiltered[1] - 3
    assert abs(beta[1] - unfiltered[1]) < 0.2 and beta[0] < unfiltered[0] - 3
    assert spatial_probe.parse_band("all") is None
    assert spatial_probe.parse_band("8-13") == (8.0, 13.0)
    with pytest.raises(argparse.ArgumentTypeError, match="Nyquist"):
        spatial_probe.parse_band("100-130")


@pytest.mark.slow
def test_target_probe_probes_codes_and_projections(tmp_path):
    """``benchmarks/target_probe.py``: a row per target option set and mode, scores in [0, 1];
    an unknown option is a one-line usage error naming it."""
    data = _tiny_probe_data(tmp_path)
    out = tmp_path / "targets.json"
    result = run_command(
        [sys.executable, "benchmarks/target_probe.py", "--data", data, "--task", "event",
         "--targets", "shipped", "codebooks=2,dim=4,size=32", "--seeds", "0",
         "--json", str(out)],
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [source["name"] for source in report["sources"]] == [
        "shipped codes", "shipped projection",
        "codebooks=2,dim=4,size=32 codes", "codebooks=2,dim=4,size=32 projection"]
    # two codebooks of 32 codes side by side, mean and std pooled
    assert report["sources"][2]["feature_dim"] == 2 * 2 * 32
    assert all(0 <= s["macro_f1"]["mean"] <= 1 for s in report["sources"])
    for option in ("codebook=4", "dim=wide"):
        bad = run_command([sys.executable, "benchmarks/target_probe.py", "--data", data,
                           "--targets", option], timeout=60)
        assert bad.returncode == 2 and option in bad.stderr


def test_spectral_whitening_flattens_a_one_over_f_spectrum():
    sys.path.insert(0, "benchmarks")
    import target_probe

    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    pink = torch.randn(4, 3, 2000, generator=generator).cumsum(-1)  # 1/f^2 power
    flat = target_probe.spectral_whitening(pink, 1.0)

    def low_to_high(x):
        power = torch.fft.rfft(x - x.mean(-1, keepdim=True)).abs().pow(2).mean((0, 1))
        return float(power[1:20].mean() / power[400:].mean())

    assert flat.shape == pink.shape
    assert low_to_high(flat) < low_to_high(pink) / 10  # measured: 44x flatter


def test_training_summary_keeps_every_criterion_term():
    """One ``loss_<i>`` per extra loss: a fourth term (e.g. the teacher loss) is not dropped."""
    sys.path.insert(0, "benchmarks")
    import probe_synthetic

    line = {"num_updates": 600, "loss": 4.3, "accuracy": 0.4, "loss_0": 2.7, "loss_1": 1.05,
            "loss_2": 0.04, "loss_3": 0.5, "loss_10": 0.1}
    training = {"command": ["fairseq-hydra-train"], "wall_s": None,
                "log": {"train_inner": [line], "valid": [line], "train": []}}
    summary = probe_synthetic.training_summary(training)
    assert summary["final_train"]["loss_3"] == 0.5 and summary["final_valid"]["loss_10"] == 0.1
    assert list(summary["final_train"])[-5:] == ["loss_0", "loss_1", "loss_2", "loss_3", "loss_10"]
    assert summary["updates"] == 600


def test_frame_power_axes_standardise_project_and_remove_the_baseline():
    """``spatial_probe.FramePowerAxes``: each sensor's frame log power, standardised with the
    given mean and scale, on the given axes; with ``baseline`` each sensor's mean over the
    window's frames is removed, so a power step keeps its change and loses its level."""
    sys.path.insert(0, "benchmarks")
    import spatial_probe

    rng = np.random.default_rng(0)
    noise = rng.normal(size=(2, 600))
    noise[1, 300:] *= 4.0  # sensor 1's power steps up by log(16) half-way
    mean, scale = np.array([0.0, 1.0]), np.array([1.0, 2.0])
    axes = np.array([[1.0], [0.0]])  # keep sensor 0 only
    plain = spatial_probe.FramePowerAxes("plain", 60, 10, mean, scale, np.eye(2))
    frames, _ = plain.frames(noise[None])
    np.testing.assert_allclose(frames[0, :10, 0].mean(), np.log(1.0), atol=0.3)
    step = frames[0, -10:, 1].mean() - frames[0, :10, 1].mean()
    np.testing.assert_allclose(step, np.log(16.0) / 2.0, atol=0.3)  # divided by the scale 2
    projected, _ = spatial_probe.FramePowerAxes("one", 60, 10, mean, scale, axes).frames(
        noise[None])
    assert projected.shape == (1, frames.shape[1], 1)
    np.testing.assert_allclose(projected[..., 0], frames[..., 0])
    changed, _ = spatial_probe.FramePowerAxes("change", 60, 10, mean, scale, np.eye(2),
                                              baseline=True).frames(noise[None])
    np.testing.assert_allclose(changed.mean(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(changed[0, -10:, 1].mean() - changed[0, :10, 1].mean(), step)
    # with_mean: each sensor's frame mean first (a slow deflection the variance misses)
    ramp = noise + np.r_[np.zeros(300), np.full(300, 5.0)]  # sensor 0's mean steps by 5
    both = spatial_probe.FramePowerAxes("both", 60, 10, np.zeros(4), np.ones(4), np.eye(4),
                                        with_mean=True)
    values, _ = both.frames(ramp[None])
    assert values.shape == (1, frames.shape[1], 4)
    np.testing.assert_allclose(values[0, -10:, 0].mean(), 5.0, atol=0.3)
    np.testing.assert_allclose(values[0, :10, 0].mean(), 0.0, atol=0.3)
    np.testing.assert_allclose(values[0, -10:, 3].mean(), np.log(16.0), atol=0.3)  # power


def ablation_dry_run(tmp_path, *flags: str):
    """``ablation.py --dry-run`` of the shipped variant, one pre-training seed, with ``flags``;
    its output lists every command it would run."""
    return run_command([sys.executable, "benchmarks/ablation.py", "--dry-run", "--out",
                        str(tmp_path / "abl"), "--only", "shipped", "--pretrain-seeds", "1",
                        *flags], timeout=120)


def test_event_kinds_option_sets_the_generator_and_the_data_key(tmp_path):
    """``--event-kinds``: parsed into (duration, carrier) pairs with a one-line error naming a
    bad kind; the default keeps the data directories of earlier rounds (same key); other
    kinds change the key, the generator's kinds and the labels' classes; ablation.py forwards
    the option to probe_synthetic."""
    import argparse

    sys.path.insert(0, "benchmarks")
    import probe_synthetic

    from meg2vec_fairseq.synthetic import EVENT_KINDS

    kinds = probe_synthetic.parse_event_kinds("0.25:0,0.35:0,0.5:6,0.35:18,0.25:40")
    assert kinds == ((0.25, 0.0), (0.35, 0.0), (0.5, 6.0), (0.35, 18.0), (0.25, 40.0))
    assert probe_synthetic.format_event_kinds(kinds) == "0.25:0,0.35:0,0.5:6,0.35:18,0.25:40"
    for bad, message in (("0.3:0", "at least two"), ("0.3:0,0.2", "'0.2'.*DURATION:CARRIER"),
                         ("0.3:0,2:0", "'2:0'.*duration"), ("0.3:0,0.2:-5", "carrier must be 0")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            probe_synthetic.parse_event_kinds(bad)
    args = argparse.Namespace(
        data_dir=str(tmp_path / "data"), pretrain_recordings=3, probe_recordings=5,
        seconds=12.0, event_snr=2.0, rhythm_bandwidth=2.0, generator_seed=1234,
        state_alpha_suppression=0.15, state_response=0.05, window=0.5, state_window=1.0,
        context=1.0)
    default_key = probe_synthetic.data_key(args)
    assert probe_synthetic.data_key(argparse.Namespace(**vars(args), event_kinds=EVENT_KINDS)
                                    ) == default_key
    five = argparse.Namespace(**vars(args), event_kinds=kinds)
    assert probe_synthetic.data_key(five) != default_key
    config = probe_synthetic.generator_config(five)
    assert config.event_kinds == kinds and config.n_event_kinds == 5
    data = probe_synthetic.prepare_data(five)["dir"]
    with open(os.path.join(data, "probe", "labels_event.tsv")) as f:
        classes = {row["label"] for row in csv.DictReader(f, delimiter="\t")}
    assert classes <= {f"kind{k}" for k in range(5)} and "kind4" in classes
    dry = ablation_dry_run(tmp_path, "--event-kinds", "0.3:0,0.2:25")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "--event-kinds 0.3:0,0.2:25" in dry.stdout
    bad = run_command([sys.executable, "benchmarks/ablation.py", "--dry-run", "--event-kinds",
                       "0.3:0"], timeout=120)
    assert bad.returncode == 2 and "at least two event kinds" in bad.stderr


def test_sensor_count_and_rate_options_reach_the_data_the_task_and_the_labels(tmp_path):
    """``--n-sensors`` / ``--sfreq``: the generated segments have that many sensors and
    samples per second, the probe windows are cut at that rate, pre-training is told both
    (``task.in_channels`` / ``task.sample_rate``), the defaults keep earlier data keys, and a
    rate whose Nyquist frequency is not above every generator frequency is a one-line error."""
    sys.path.insert(0, "benchmarks")
    import probe_synthetic

    args = argparse.Namespace(
        data_dir=str(tmp_path / "data"), pretrain_recordings=3, probe_recordings=5,
        seconds=12.0, event_snr=2.0, rhythm_bandwidth=2.0, generator_seed=1234,
        state_alpha_suppression=0.15, state_response=0.05, window=0.5, state_window=1.0,
        context=1.0, event_kinds=None)
    default_key = probe_synthetic.data_key(args)
    assert probe_synthetic.data_key(argparse.Namespace(**vars(args), n_sensors=306, sfreq=250)
                                    ) == default_key
    assert probe_synthetic.data_problem(args) is None
    small = argparse.Namespace(**vars(args), n_sensors=8, sfreq=100)
    assert probe_synthetic.data_key(small) != default_key
    assert probe_synthetic.data_overrides(small) == ["task.in_channels=8",
                                                     "task.sample_rate=100"]
    data = probe_synthetic.prepare_data(small)
    with open(os.path.join(data["pretrain"], "train.tsv")) as f:
        root, first = f.readline().strip(), f.readline().split("\t")
    segment = np.load(os.path.join(root, first[0]))
    assert segment.shape[0] == 8 and int(first[1]) == segment.shape[1]
    assert segment.shape[1] % 100 == 0 and segment.shape[1] != 0  # whole seconds at 100 Hz
    event = probe_synthetic.task_dataset(data, "event", small.context)
    window = event.split_windows("train")[0]
    assert window.pool[1] - window.pool[0] == 50  # the 0.5-s event span at 100 Hz
    for bad, message in (
        (dict(n_sensors=1, sfreq=250), "--n-sensors must be at least 2"),
        (dict(n_sensors=8, sfreq=40), "--sfreq 40: its Nyquist frequency \\(20 Hz\\)"),
        (dict(pretrain_recordings=2), "--pretrain-recordings must be at least 3"),
        (dict(probe_recordings=4), "--probe-recordings must be at least 5"),
    ):
        problem = probe_synthetic.data_problem(argparse.Namespace(**{**vars(args), **bad}))
        assert problem is not None and re.search(message, problem), problem
    carrier = argparse.Namespace(**{**vars(args), "event_kinds": ((0.3, 0.0), (0.2, 130.0))})
    assert "130 Hz" in probe_synthetic.data_problem(carrier)
    dry = ablation_dry_run(tmp_path, "--n-sensors", "64", "--sfreq", "200")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "task.in_channels=64 task.sample_rate=200" in dry.stdout
    assert "--n-sensors 64 --sfreq 200" in dry.stdout
    bad = run_command([sys.executable, "benchmarks/ablation.py", "--dry-run", "--sfreq", "30"],
                      timeout=120)
    assert bad.returncode == 2 and "Nyquist frequency (15 Hz)" in bad.stderr
    # the fixed views of spatial_probe.py assume 250 Hz: they refuse the 100-Hz data
    refused = run_command([sys.executable, "benchmarks/spatial_probe.py", "--data", data["dir"],
                           "--task", "event", "--config", ""], timeout=120)
    assert refused.returncode == 2 and "generated at 100 Hz" in refused.stderr


def test_finetune_lr_encoder_reaches_the_options_and_the_ablations_commands(tmp_path):
    """``--finetune-lr-encoder``: probe_synthetic's fine-tuning options carry it (default
    FinetuneOptions'), ablation.py forwards it to every evaluation, and a learning rate that is
    not positive is a one-line error of either command."""
    sys.path.insert(0, "benchmarks")
    import probe_synthetic

    from meg2vec_fairseq.probing.finetune import FinetuneOptions

    args = argparse.Namespace(finetune_epochs=3, layers=["cnn+last"], finetune_probe_init=True,
                              finetune_pooling="meanstd", finetune_lr_encoder=3e-5)
    options = probe_synthetic.finetune_options(args)
    assert options.lr_encoder == 3e-5 and options.lr_head == FinetuneOptions.lr_head
    assert options.layer == ("cnn", None)
    dry = ablation_dry_run(tmp_path, "--finetune-lr-encoder", "3e-05")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "--finetune-lr-encoder 3e-05" in dry.stdout
    default = ablation_dry_run(tmp_path)
    assert f"--finetune-lr-encoder {FinetuneOptions.lr_encoder}" in default.stdout
    for script in ("benchmarks/ablation.py", "benchmarks/probe_synthetic.py"):
        bad = run_command([sys.executable, script, "--out", str(tmp_path / "bad"),
                           "--finetune-lr-encoder", "0"], timeout=120)
        assert bad.returncode == 2, script
        assert "--finetune-lr-encoder must be positive, got 0.0" in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()
