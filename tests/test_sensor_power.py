"""The per-sensor power path (``sensor_power_path``): each sensor's frame log power, taken
before the first convolution mixes the sensors, added to the conv encoder's output."""

import math

import torch
from test_model import SMALL, build_meg2vec

from meg2vec_fairseq.conv_geometry import conv_frame_geometry
from meg2vec_fairseq.models.sensor_power import SensorPowerPath, frame_log_power


def weak_burst_under_shared_rhythm() -> torch.Tensor:
    """``(4, 6, 600)`` crops at 250 Hz: a strong 10-Hz rhythm with a slow envelope common to
    every sensor (gains 0.8-1.2), weak white noise, and a weak 25-Hz burst on sensor 2 over
    samples 300-375 (frames 60-73 of a 10-sample window with hop 5)."""
    generator = torch.Generator().manual_seed(0)
    b, c, t = 4, 6, 600
    time = torch.arange(t) / 250.0
    phases = torch.rand(2, b, 1, 1, generator=generator) * 6
    envelope = 1 + 0.8 * torch.sin(2 * math.pi * 0.7 * time + phases[0])
    rhythm = 5 * envelope * torch.sin(2 * math.pi * 10 * time + phases[1])
    source = 0.1 * torch.randn(b, c, t, generator=generator)
    source = source + rhythm * torch.linspace(0.8, 1.2, c).view(1, c, 1)
    source[:, 2, 300:375] += 0.5 * torch.sin(2 * math.pi * 25 * time[:75])
    return source


def test_frame_log_power_follows_each_sensors_power_and_marks_constant_frames():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 400)
    x[0, 1, 200:] *= 2.0  # sensor 1 four times the power in the second half
    x[0, 2] = 0.0  # a zeroed sensor (sensor masking)
    log_power, defined = frame_log_power(x, receptive_field=40, stride=20)
    assert log_power.shape == defined.shape == (1, 3, 19)
    first, second = log_power[0, 1, :8].mean(), log_power[0, 1, 11:].mean()
    assert abs((second - first).item() - math.log(4.0)) < 0.4
    assert defined[0, :2].all() and not defined[0, 2].any()
    assert (log_power[0, 2] == 0).all()


def test_power_path_is_unit_free_ignores_zeroed_sensors_and_keeps_running_statistics():
    """Standardising per sensor removes each sensor's gain (magnetometers and gradiometers
    differ by orders of magnitude); a zeroed sensor adds nothing and does not move its
    statistics; after training batches, eval mode uses the running statistics (a sustained
    power change then shifts the output), before any, each batch's own."""
    torch.manual_seed(0)
    path = SensorPowerPath(in_channels=4, feature_dim=6, receptive_field=20, stride=10)
    torch.nn.init.normal_(path.mix.weight)
    x = torch.randn(2, 4, 300)
    gains = torch.tensor([1e-13, 1.0, 50.0, 1e-3]).view(1, 4, 1)
    path.eval()
    torch.testing.assert_close(path(x * gains), path(x), atol=1e-4, rtol=1e-4)
    assert int(path.batches_seen) == 0  # eval mode never updates
    path.train()
    for _ in range(50):
        path(torch.randn(8, 4, 300) * gains)
    assert int(path.batches_seen) == 50
    offsets = path.running_mean - path.running_mean[1]  # each sensor's gain, as 2 log g
    torch.testing.assert_close(offsets, 2 * gains.flatten().log(), atol=0.05, rtol=0)
    zeroed = x * gains
    zeroed[:, 3] = 0
    running_mean = path.running_mean.clone()
    standardised = path.standardised_log_power(zeroed)
    assert (standardised[:, 3] == 0).all()
    assert path.running_mean[3] == running_mean[3]
    path.eval()
    louder = path.standardised_log_power(x * gains * 3.0)
    quiet = path.standardised_log_power(x * gains)
    torch.testing.assert_close(louder - quiet,
                               2 * math.log(3.0) / (path.running_var[None, :, None] + 1e-5).sqrt()
                               .expand_as(louder), atol=1e-3, rtol=1e-3)
    # fairseq's bf16 mode converts buffers too: statistics stay float32 arithmetic
    seen = int(path.batches_seen)
    path.to(torch.bfloat16).train()
    out = path(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert int(path.batches_seen) == seen + 1


def test_power_path_adds_to_the_conv_output_and_learns_through_the_model():
    """On: the conv encoder's output is the convolutions' plus the path's, frame for frame;
    the path's weights get gradient from the pre-training loss; no extra loss is added.
    Off (default): no path, no parameters."""
    torch.manual_seed(0)
    model = build_meg2vec(in_channels=8, target_codebook_size=64, sensor_power_path=True)
    extractor = model.feature_extractor
    assert isinstance(extractor.power_path, SensorPowerPath)
    assert (extractor.power_path.mix.weight == 0).all()  # fresh: the model without the path
    torch.nn.init.normal_(extractor.power_path.mix.weight)
    receptive_field, stride = conv_frame_geometry(SMALL["conv_feature_layers"])
    assert (extractor.power_path.receptive_field, extractor.power_path.stride) == (
        receptive_field, stride)
    source = torch.randn(2, 8, 1000)
    with torch.no_grad():
        with_path = extractor(source)
        path = extractor.power_path
        extractor.power_path = None
        without = extractor(source)
        extractor.power_path = path
        torch.testing.assert_close(with_path - without, path(source))
    model.train()
    out = model(source)
    assert len(model.get_extra_losses(out)) == 2  # diversity, features_pen: nothing new
    torch.nn.init.zeros_(path.mix.weight)
    out = model(source)
    out["x"].sum().backward()
    assert path.mix.weight.grad.abs().sum() > 0  # a zero map still learns
    plain = build_meg2vec(in_channels=8)
    assert plain.feature_extractor.power_path is None
    assert not any("power_path" in key for key in plain.state_dict())


def test_frame_power_head_reads_the_convolutions_before_the_path_when_asked():
    """``cnn_frame_power_before_path``: the frame-power loss is the one of the convolutions'
    own output (the path's map changes nothing in it and gets no gradient from it), while
    the conv weights still learn from it. Without the option the path enters the loss, so it
    could hand the head its target past the convolutions."""
    source = torch.randn(2, 8, 1000)

    def frame_power_loss(model):
        torch.manual_seed(1)  # the same time and sensor masks in every call
        return model(source)["frame_power_loss"]

    def build(before_path: bool):
        torch.manual_seed(0)
        model = build_meg2vec(
            in_channels=8, target_codebook_size=64, cnn_frame_power=True,
            sensor_power_path=True, cnn_frame_power_before_path=before_path,
        )
        return model.eval()  # no dropout; the masks still apply (mask=True)

    before = build(before_path=True)
    path = before.feature_extractor.power_path
    mix = path.mix.weight
    before.feature_extractor.power_path = None
    with torch.no_grad():
        reference = frame_power_loss(before)  # the same model without the path
    before.feature_extractor.power_path = path
    torch.testing.assert_close(frame_power_loss(before), reference)
    torch.nn.init.normal_(mix)
    loss = frame_power_loss(before)
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert mix.grad is None or (mix.grad == 0).all()
    first_conv = before.feature_extractor.conv_layers[0][0].weight
    assert first_conv.grad.abs().sum() > 0

    after = build(before_path=False)
    torch.nn.init.normal_(after.feature_extractor.power_path.mix.weight)
    loss = frame_power_loss(after)
    assert (loss - reference).abs() > 1e-3
    loss.backward()
    assert after.feature_extractor.power_path.mix.weight.grad.abs().sum() > 0


def test_power_path_after_norm_moves_fairseqs_layer_norm_before_the_path():
    """``sensor_power_path_after_norm``: the conv output is normalised per frame by fairseq's
    layer norm (moved into the extractor, one module) before the path is added, so the path
    does not rescale it; with the path at zero the model is the usual one, output for output.
    Without the path the option is refused when the model is built."""
    source = torch.randn(2, 8, 1000)

    def build(after_norm: bool):
        torch.manual_seed(0)
        return build_meg2vec(
            in_channels=8, target_codebook_size=64, sensor_power_path=True,
            sensor_power_path_after_norm=after_norm,
        ).eval()

    usual, moved = build(False), build(True)
    assert isinstance(moved.layer_norm, torch.nn.Identity)
    keys = moved.state_dict().keys()
    assert "feature_extractor.output_norm.weight" in keys and "layer_norm.weight" not in keys
    with torch.no_grad():
        torch.testing.assert_close(
            moved(source, mask=False, features_only=True)["x"],
            usual(source, mask=False, features_only=True)["x"],
        )
        extractor = moved.feature_extractor
        torch.nn.init.normal_(extractor.power_path.mix.weight, std=10.0)
        conv_part = extractor(source) - extractor.power_path(source)
        # every frame of the conv part normalised, however large the path is there
        torch.testing.assert_close(conv_part.mean(dim=1), torch.zeros(2, conv_part.size(2)),
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(conv_part.std(dim=1, unbiased=False),
                                   torch.ones(2, conv_part.size(2)), atol=1e-3, rtol=0)
    moved.train()
    out = moved(source)  # a pre-training forward runs (its logits hold -inf by design)
    assert not torch.isnan(out["x"]).any() and torch.isfinite(out["features_pen"])
    try:
        build_meg2vec(in_channels=8, sensor_power_path_after_norm=True)
    except ValueError as error:
        assert "sensor_power_path_after_norm" in str(error)
    else:
        raise AssertionError("sensor_power_path_after_norm without the path was accepted")


def test_power_path_keeps_a_weak_sensors_power_change_that_mixing_buries():
    """A power change in a sensor that the strong shared component barely reaches: in the
    path's standardised log power (what its linear map reads) it moves by many times its
    frame-to-frame spread; in the log power of a fresh first convolution's features
    (sensors mixed first) it is lost in the strong component's fluctuations."""
    torch.manual_seed(0)
    n_sensors, n_samples, half = 32, 2000, 1000
    topography = torch.randn(1, n_sensors, 1)
    topography[0, 7] = 0.01
    x = torch.randn(1, 1, n_samples) * 10.0 * topography + 0.1 * torch.randn(1, n_sensors,
                                                                              n_samples)
    x[0, 7, half:] += 0.3 * torch.randn(half)  # sensor 7's own power rises about five-fold

    def shift_over_spread(features: torch.Tensor) -> float:
        frames = features.shape[-1]
        before, after = features[:, : frames // 2 - 2], features[:, frames // 2 + 2:]
        shift = (after.mean(dim=-1) - before.mean(dim=-1)).abs()
        return (shift / before.std(dim=-1)).max().item()

    path = SensorPowerPath(n_sensors, feature_dim=16, receptive_field=50, stride=25)
    conv = torch.nn.Conv1d(n_sensors, 16, kernel_size=50, stride=25, bias=False)
    with torch.no_grad():
        kept = shift_over_spread(path.standardised_log_power(x)[0, 7:8])
        mixed = shift_over_spread(conv(x)[0].pow(2).log())
    assert kept > 4.0 and mixed < 1.0


def test_banded_power_path_sees_one_rhythms_power_change_that_broadband_power_hides():
    """``bands``: each sensor's power in each band follows after the unfiltered power
    (sensor-major); a sensor whose 10-Hz rhythm weakens while a 25-Hz one strengthens keeps
    its total power, so the unfiltered value does not move, but the 8-13 Hz one falls and the
    20-30 Hz one rises; a zeroed sensor gives 0 in every band and keeps its statistics."""
    torch.manual_seed(0)
    rate, n = 250.0, 2000
    t = torch.arange(n) / rate
    alpha, beta = torch.sin(2 * math.pi * 10 * t), torch.sin(2 * math.pi * 25 * t)
    switch = (t >= t[n // 2]).float()  # 10 Hz strong, then 25 Hz strong: same variance
    sensor0 = (1.0 - 0.8 * switch) * alpha + (0.2 + 0.8 * switch) * beta
    x = torch.stack([sensor0, torch.randn(n), torch.zeros(n)])[None] \
        + 0.01 * torch.randn(1, 3, n) * torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1)
    path = SensorPowerPath(3, feature_dim=4, receptive_field=60, stride=10,
                           bands=[(8.0, 13.0), (20.0, 30.0)], sample_rate=rate)
    assert path.mix.in_channels == 3 * 3 and path.running_mean.shape == (9,)
    log_power, defined = path.log_power(x)
    assert log_power.shape == defined.shape == (1, 9, (n - 60) // 10 + 1)
    frames = log_power.shape[-1]
    before, after = slice(10, frames // 2 - 10), slice(frames // 2 + 10, frames - 10)

    def change(row: int) -> float:
        return (log_power[0, row, after].mean() - log_power[0, row, before].mean()).item()

    # rows: unfiltered (sensors 0, 1, 2), then sensor 0's two bands, sensor 1's, sensor 2's
    assert abs(change(0)) < 0.1  # total power unchanged
    assert change(3) < -2.0 and change(4) > 2.0  # 8-13 Hz falls, 20-30 Hz rises
    assert not defined[0, 2].any() and not defined[0, 7:9].any()  # the zeroed sensor
    assert (log_power[0, 7:9] == 0).all()
    path.train()
    path(x)
    standardised = path.standardised_log_power(x)
    assert (standardised[0, 7:9] == 0).all() and (path.running_mean[7:9] == 0).all()
    assert torch.isfinite(standardised).all()


def test_banded_power_path_builds_from_the_config_and_trains():
    """``sensor_power_path_bands``: the path's map reads every sensor in every band and the
    unfiltered power; a pre-training forward and backward run; off, the map is as before."""
    torch.manual_seed(0)
    model = build_meg2vec(in_channels=8, sample_rate=250, target_codebook_size=64,
                          sensor_power_path=True,
                          sensor_power_path_bands="[(1,8),(8,13),(13,30),(30,45)]")
    path = model.feature_extractor.power_path
    assert path.bands == [(1.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, 45.0)]
    assert path.sample_rate == 250.0 and path.mix.weight.shape[1] == 8 * 5
    model.train()
    out = model(torch.randn(2, 8, 1000))
    out["x"].sum().backward()
    assert path.mix.weight.grad.abs().sum() > 0
    plain = build_meg2vec(in_channels=8, sensor_power_path=True)
    assert plain.feature_extractor.power_path.mix.weight.shape[1] == 8


def test_kept_sensor_whitening_whitens_each_crops_kept_sensors_only():
    """Each crop's matrix is the shrunk whitening of the covariance block between the sensors
    it kept, zero in the rows and columns of the others; a crop that kept every sensor gets
    the whitening of the whole covariance."""
    from meg2vec_fairseq.models.spatial_filter import kept_sensor_whitening, whitening_matrix

    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=generator)
    covariance = mixing @ mixing.t() + 0.1 * torch.eye(6)
    kept = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    matrices = kept_sensor_whitening(covariance, kept, shrinkage=0.1)
    assert matrices.shape == (2, 6, 6)
    index = kept[0].nonzero().flatten()
    block = whitening_matrix(covariance[index][:, index], 0.1)
    torch.testing.assert_close(matrices[0][index][:, index], block)
    assert (matrices[0][~kept[0]] == 0).all() and (matrices[0][:, ~kept[0]] == 0).all()
    torch.testing.assert_close(matrices[1], whitening_matrix(covariance, 0.1))
    # unshrunk, the kept sensors come out white
    white = kept_sensor_whitening(covariance, kept, shrinkage=0.0)[0][index][:, index]
    torch.testing.assert_close(white @ covariance[index][:, index] @ white.t(),
                               torch.eye(len(index)), atol=1e-4, rtol=1e-4)


def test_whitened_power_path_lifts_a_weak_burst_under_a_strong_shared_rhythm():
    """``whiten``: after each sensor's own frame log power the path maps each whitened
    sensor's. A strong rhythm common to every sensor swamps a weak burst on sensor 2 in its
    own power; whitened, the burst's frames stand out. A sensor zeroed in a crop (sensor
    masking) stays out: the crop is whitened over its kept sensors, and the zeroed sensor's
    values are 0. The own powers are those of the path without whitening."""
    source = weak_burst_under_shared_rhythm()
    b, c, t = source.shape
    plain = SensorPowerPath(c, feature_dim=8, receptive_field=10, stride=5).eval()
    path = SensorPowerPath(c, feature_dim=8, receptive_field=10, stride=5, whiten=0.01).eval()
    assert path.mix.in_channels == 2 * c and (path.mix.weight == 0).all()
    values = path.standardised_log_power(source)
    torch.testing.assert_close(values[:, :c], plain.standardised_log_power(source))
    inside = torch.zeros((t - 10) // 5 + 1, dtype=torch.bool)
    inside[60:74] = True  # frames within the burst (samples 300-375)

    def contrast(frames):
        return float((frames[:, inside].mean() - frames[:, ~inside].mean()) / frames.std())

    assert contrast(values[:, c + 2]) > 1.0 > 2 * contrast(values[:, 2])
    masked = source.clone()
    masked[0, 4] = 0.0
    whitened = path.whitened(masked)
    assert (whitened[0, 4] == 0).all()
    assert (path.standardised_log_power(masked)[0, [4, c + 4]] == 0).all()
    kept = [0, 1, 2, 3, 5]
    expected = path.whitening_covariance.batch_covariance(masked)  # untrained: the batch's
    from meg2vec_fairseq.models.spatial_filter import whitening_matrix

    crop = whitening_matrix(expected[kept][:, kept], 0.01) @ masked[0, kept]
    torch.testing.assert_close(whitened[0, kept], crop, atol=1e-4, rtol=1e-4)


def test_whitened_power_path_covariance_comes_from_complete_training_crops():
    """In a pre-training forward the model folds the crops into the path's running
    covariance before sensor masking zeroes any sensor (so it is the covariance of complete
    crops), saves it in the state dict, and leaves it alone in feature extraction; while the
    path's map is at its initial zero the features are those of the model without a path."""
    from meg2vec_fairseq.models.spatial_filter import RunningSensorCovariance

    torch.manual_seed(0)
    options = dict(in_channels=8, target_codebook_size=64, sensor_power_path=True,
                   mask_sensors_prob=0.5)
    model = build_meg2vec(sensor_power_path_whiten=0.1, **options)
    statistics = model.feature_extractor.power_path.whitening_covariance
    assert "feature_extractor.power_path.whitening_covariance.running_covariance" in (
        model.state_dict())
    source = torch.randn(3, 8, 1000) * torch.linspace(0.5, 2.0, 8).view(1, 8, 1)
    model.train()
    model(source)
    assert int(statistics.batches_seen) == 1
    torch.testing.assert_close(statistics.running_covariance,
                               RunningSensorCovariance.batch_covariance(source))
    model(source, mask=False, features_only=True)
    assert int(statistics.batches_seen) == 1
    half = RunningSensorCovariance(8).to(torch.bfloat16)  # fairseq's bf16 mode: buffers too
    for _ in range(2):
        half.update(source.to(torch.bfloat16))
    torch.testing.assert_close(half.covariance(source), statistics.running_covariance,
                               atol=0.05, rtol=0.02)
    model.eval()
    with torch.no_grad():
        with_path = model(source, mask=False, features_only=True)["x"]
        path, model.feature_extractor.power_path = model.feature_extractor.power_path, None
        torch.testing.assert_close(with_path,
                                   model(source, mask=False, features_only=True)["x"])
    model.feature_extractor.power_path = path
