"""The optional objectives of ``meg2vec`` (all off by default; see ``test_model.py``).

Pretext heads (band stop, phase shift, amplitude scale), frozen random-projection targets,
near negatives, sensor masking, AMP, option validation, and one ``fairseq-hydra-train`` run
with everything on.
"""

import math
import time

import numpy as np
import pytest
import torch
from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
from fairseq.dataclass.utils import merge_with_parent
from meg_fixtures import parse_fairseq_log, run_command
from omegaconf import OmegaConf
from test_model import SMALL, build_meg2vec
from test_sensor_power import weak_burst_under_shared_rhythm

from meg2vec_fairseq.conv_geometry import conv_frame_count, conv_frame_geometry
from meg2vec_fairseq.models.band_power import BandPowerTargets
from meg2vec_fairseq.models.meg2vec import Meg2VecConfig, Meg2VecModel
from meg2vec_fairseq.models.pretext import (
    amplitude_factors,
    amplitude_scale,
    band_stop,
    phase_shift,
)
from meg2vec_fairseq.models.targets import RandomProjectionQuantizer

ACCURACY_KEYS = [
    "pretext_band_stop_accuracy",
    "pretext_phase_shift_accuracy",
    "pretext_amplitude_scale_accuracy",
]
ALL_ON = dict(
    sample_rate=250,
    pretext_band_stop="[(1,4),(8,13),(20,40)]",
    pretext_phase_shift_classes=4,
    pretext_amplitude_scale_classes=3,
    target_codebook_size=64,
    target_codebook_dim=8,
    negatives_max_distance=4,
    mask_sensors_prob=0.25,
)


def criterion(loss_weights, log_keys=()):
    return Wav2vecCriterion(
        task=None, infonce=True, loss_weights=list(loss_weights), log_keys=list(log_keys)
    )


def batch(b=4, c=8, t=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"id": torch.arange(b), "net_input": {"source": torch.randn(b, c, t, generator=g)}}


# --------------------------------------------------------------------------- transforms


def power_in(x, sample_rate, low, high):
    spectrum = torch.fft.rfft(x, dim=-1).abs().pow(2)
    freqs = torch.fft.rfftfreq(x.size(-1), 1 / sample_rate)
    return spectrum[..., (freqs >= low) & (freqs <= high)].sum(-1)


def test_band_stop_removes_the_band_and_keeps_the_rest():
    x = torch.randn(2, 3, 1000)
    bands = torch.tensor([[8.0, 13.0], [20.0, 40.0]])
    y = band_stop(x, bands, 250.0)
    for i, (low, high) in enumerate(bands.tolist()):
        assert power_in(y[i], 250, low, high).max() < 1e-6 * power_in(x[i], 250, low, high).min()
    # outside the removed band nothing changes: sample 0 keeps 20-40 Hz, sample 1 keeps 8-13 Hz
    torch.testing.assert_close(power_in(y[0], 250, 20, 40), power_in(x[0], 250, 20, 40))
    torch.testing.assert_close(power_in(y[1], 250, 8, 13), power_in(x[1], 250, 8, 13))
    torch.testing.assert_close(power_in(y[0], 250, 14, 125), power_in(x[0], 250, 14, 125))


@pytest.mark.parametrize("length", [1000, 999])  # with and without a Nyquist bin
def test_phase_shift_by_pi_flips_the_chosen_sensors_and_zero_is_the_identity(length):
    x = torch.randn(2, 4, length)
    sensors = torch.tensor([[True, False, True, False], [False, False, False, True]])
    flipped = phase_shift(x, torch.full((2,), math.pi), sensors)
    torch.testing.assert_close(flipped[sensors], -x[sensors], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flipped[~sensors], x[~sensors], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(phase_shift(x, torch.zeros(2), sensors), x, atol=1e-5, rtol=1e-5)
    # pi/2 on a cosine gives minus a sine (analytic-signal rotation), power unchanged
    t = torch.arange(length) / 250.0
    cosine = torch.cos(2 * math.pi * 10 * t).expand(1, 1, length)
    quarter = phase_shift(cosine, torch.tensor([math.pi / 2]), torch.tensor([[True]]))
    sine = -torch.sin(2 * math.pi * 10 * t)
    assert torch.allclose(quarter[0, 0, 50:-50], sine[50:-50], atol=0.05)


def test_amplitude_scale_multiplies_the_chosen_sensors_only():
    x = torch.randn(2, 3, 100)
    sensors = torch.tensor([[True, False, False], [False, True, True]])
    y = amplitude_scale(x, torch.tensor([2.0, 0.5]), sensors)
    torch.testing.assert_close(y[0, 0], 2 * x[0, 0])
    torch.testing.assert_close(y[1, 1:], 0.5 * x[1, 1:])
    torch.testing.assert_close(y[~sensors], x[~sensors])
    torch.testing.assert_close(
        amplitude_factors(5, 2.0), torch.tensor([0.5, 2**-0.5, 1, 2**0.5, 2])
    )


def test_model_transforms_touch_the_configured_share_of_sensors():
    model = build_meg2vec(
        in_channels=10,
        sample_rate=250,
        pretext_amplitude_scale_classes=2,
        pretext_amplitude_scale_max=3.0,
        pretext_sensor_fraction=0.3,
    )
    x = torch.randn(64, 10, 300)
    y, labels = model.pretext.transform(x)
    changed = ~torch.isclose(y, x).all(-1)  # (B, C)
    assert (changed.sum(-1) == 3).all()
    factors = (y.norm(dim=-1) / x.norm(dim=-1))[changed]
    expected = torch.tensor([1 / 3, 3.0])[labels["amplitude_scale"]].repeat_interleave(3)
    torch.testing.assert_close(factors, expected)


# --------------------------------------------------------------------------- pretext heads


def test_extra_losses_follow_the_documented_order_and_the_criterion_runs():
    model = build_meg2vec(in_channels=8, **ALL_ON).train()
    log_keys = ["prob_perplexity", "code_perplexity", "temp", *ACCURACY_KEYS]
    out = model(**batch()["net_input"])
    extra = model.get_extra_losses(out)
    expected = [
        (out["num_vars"] - out["prob_perplexity"]) / out["num_vars"],
        out["features_pen"],
        out["pretext_band_stop_loss"],
        out["pretext_phase_shift_loss"],
        out["pretext_amplitude_scale_loss"],
    ]
    assert len(extra) == 5
    for got, want in zip(extra, expected):
        torch.testing.assert_close(got, want)
    weights = [1.0, 10, 2.0, 3.0, 4.0]
    loss, sample_size, logging = criterion(weights, log_keys)(model, batch())
    assert torch.isfinite(loss) and sample_size > 0
    for key in [*log_keys, *(f"loss_{i}" for i in range(6))]:
        assert key in logging and np.isfinite(logging[key]), key
    # loss_3..5 are the pretext losses, scaled by the criterion (weight x sample size)
    assert logging["loss_3"] > 0 and logging["loss_5"] > 0
    loss.backward()
    for name in ("band_stop", "phase_shift", "amplitude_scale"):
        assert model.pretext.heads[name].weight.grad.abs().sum() > 0, name
    with pytest.raises(AssertionError):  # a weight list of the wrong length is refused
        criterion([1.0, 10], log_keys)(model, batch())


def test_only_enabled_pretext_losses_are_appended_in_fixed_order():
    model = build_meg2vec(
        in_channels=8,
        sample_rate=250,
        pretext_amplitude_scale_classes=2,
        pretext_band_stop="[(1,4),(8,13)]",
    )
    out = model(**batch()["net_input"])
    extra = model.get_extra_losses(out)
    assert len(extra) == 4
    assert extra[2] is out["pretext_band_stop_loss"]
    assert extra[3] is out["pretext_amplitude_scale_loss"]
    assert "pretext_phase_shift_loss" not in out


def test_feature_extraction_is_untouched_by_the_pretext_options():
    model = build_meg2vec(in_channels=8, **ALL_ON).eval()
    source = batch()["net_input"]["source"]
    plain = build_meg2vec(in_channels=8).eval()
    trunk = {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith(("quantizer.", "project_q.", "pretext."))
    }
    plain.load_state_dict(trunk, strict=False)
    ours = model.extract_features(source, None)
    reference = plain.extract_features(source, None)
    torch.testing.assert_close(ours["x"], reference["x"])
    assert not any(k.startswith("pretext") for k in ours)
    model.remove_pretraining_modules()
    assert model.pretext is None and model.quantizer is None
    assert not any(k.startswith("pretext") for k in model.state_dict())
    torch.testing.assert_close(model.extract_features(source, None)["x"], reference["x"])


def test_pretext_runs_in_validation_and_the_encoder_hook_is_removed():
    model = build_meg2vec(in_channels=8, sample_rate=250, pretext_phase_shift_classes=2).eval()
    with torch.no_grad():
        out = model(**batch()["net_input"])
    assert "pretext_phase_shift_accuracy" in out
    assert not model.encoder._forward_hooks


def test_separate_view_keeps_the_masked_prediction_input_untransformed():
    """The pretext heads read a transformed copy; the wav2vec 2.0 forward sees ``source``."""
    model = build_meg2vec(
        in_channels=8, sample_rate=250, target_codebook_size=64,
        pretext_band_stop="[(1,4),(8,13)]", pretext_phase_shift_classes=4,
        pretext_separate_view=True,
    ).train()
    source = batch()["net_input"]["source"]
    inputs, stashed = [], {}
    model.feature_extractor.register_forward_hook(lambda _m, args, _o: inputs.append(args[0]))
    original = model.quantizer.stash
    model.quantizer.stash = lambda s, p=None: (stashed.setdefault("s", s), original(s, p))
    out = model(source)
    assert len(inputs) == 2  # the masked forward, then the unmasked pretext view
    torch.testing.assert_close(inputs[0], source)
    torch.testing.assert_close(stashed["s"], source)  # targets of the untransformed input
    assert not torch.allclose(inputs[1], source)
    assert not model.encoder._forward_hooks  # no capture hook in this mode
    loss, _, logging = criterion([1.0, 10, 1.0, 1.0], ACCURACY_KEYS[:2])(model, batch())
    assert np.isfinite(logging["pretext_band_stop_accuracy"])
    loss.backward()
    for name in ("band_stop", "phase_shift"):
        assert model.pretext.heads[name].weight.grad.abs().sum() > 0, name
    # the pretext gradient reaches the shared encoder through the view alone
    model.zero_grad()
    out = model(source)
    (out["pretext_band_stop_loss"] + out["pretext_phase_shift_loss"]).backward()
    assert model.feature_extractor.conv_layers[0][0].weight.grad.abs().sum() > 0


def test_band_stop_head_learns_on_a_toy():
    """100 steps of a tiny model on white noise: far above chance (0.5), in a few seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a shared machine
    try:
        torch.manual_seed(0)
        np.random.seed(0)  # fairseq draws the time masks with numpy: same run whatever ran before
        model = build_meg2vec(
            in_channels=4,
            sample_rate=100,
            conv_feature_layers="[(32, 5, 2), (32, 3, 2)]",
            encoder_layers=1,
            pretext_band_stop="[(5,15),(30,45)]",
            mask_prob=0.2,
            num_negatives=2,
        ).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        start = time.monotonic()
        for _ in range(100):
            out = model(torch.randn(16, 4, 200))
            optimizer.zero_grad()
            out["pretext_band_stop_loss"].backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = np.mean(
                [
                    float(model(torch.randn(64, 4, 200))["pretext_band_stop_accuracy"])
                    for _ in range(4)
                ]
            )
        elapsed = time.monotonic() - start
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.85, accuracy
    assert elapsed < 30, elapsed


# --------------------------------------------------------------------------- targets


STACKS = [
    "[(32, 10, 5), (32, 3, 2)]",
    "[(16, 10, 5), (16, 3, 2), (16, 3, 1), (16, 3, 1)]",
    "[(16, 7, 3), (16, 5, 2), (16, 2, 2)]",
]


@pytest.mark.parametrize("stack", STACKS)
def test_target_windows_are_the_cnn_frames(stack):
    receptive_field, stride = conv_frame_geometry(stack)
    quantizer = RandomProjectionQuantizer(8, receptive_field, stride, 32, 4)
    model = build_meg2vec(in_channels=8, conv_feature_layers=stack)
    for length in (333, 1000, 1251):
        source = torch.randn(2, 8, length)
        frames = model.feature_extractor(source).shape[-1]
        windows = source.unfold(-1, receptive_field, stride)  # (B, C, frames, rf)
        assert quantizer.codes(source).shape == (2, frames, 1)
        assert windows.shape[2] == frames
        # codes = nearest codebook entry of the projected z-scored window
        z = (source - source.mean(-1, keepdim=True)) / source.std(-1, keepdim=True)
        flat = z.unfold(-1, receptive_field, stride).permute(0, 2, 1, 3).flatten(2)
        projected = flat @ quantizer.projection.flatten(1).t()
        expected = torch.nn.functional.normalize(projected, dim=-1) @ quantizer.codebook.t()
        assert (expected.argmax(-1) == quantizer.codes(source)[..., 0]).float().mean() > 0.99


@pytest.mark.parametrize("crop", [1, 2, 7])
def test_targets_follow_the_mask_with_crop_seq_to_multiple(crop):
    model = build_meg2vec(in_channels=8, target_codebook_size=32, crop_seq_to_multiple=crop)
    widths = []
    original = model.quantizer.set_mask
    model.quantizer.set_mask = lambda m: (
        widths.append((m.shape[1], model.quantizer._codes.shape[1])),
        original(m),
    )
    loss, _, logging = criterion([1.0, 10], ["code_perplexity"])(model, batch(t=1013))
    assert torch.isfinite(loss) and logging["code_perplexity"] > 1
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(1013)))  # 100
    mask_width, code_frames = widths[-1]
    assert code_frames == frames and mask_width == frames - frames % crop


def test_random_projection_targets_are_frozen_and_deterministic():
    model = build_meg2vec(in_channels=8, target_codebook_size=64, target_codebook_dim=8).train()
    quantizer = model.quantizer
    assert isinstance(quantizer, RandomProjectionQuantizer)
    assert not list(quantizer.parameters())
    assert {"quantizer.projection", "quantizer.codebook"} <= set(model.state_dict())
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss, _, _ = criterion([1.0, 10])(model, batch())
    loss.backward()
    optimizer.step()
    for key, value in quantizer.state_dict().items():
        assert not value.requires_grad
        torch.testing.assert_close(value, before[key])
    assert model.project_q.weight.grad is not None  # the map from codes is trained
    # same seed -> same projection and codebook in another model
    other = build_meg2vec(in_channels=8, target_codebook_size=64, target_codebook_dim=8)
    torch.testing.assert_close(other.quantizer.codebook, quantizer.codebook)
    # identical windows -> identical codes: a signal periodic in 4 strides
    receptive_field, stride = conv_frame_geometry(SMALL["conv_feature_layers"])
    period = torch.randn(8, 4 * stride)
    source = period.repeat(1, 25).unsqueeze(0)
    codes = quantizer.codes(source)[0, :, 0]
    assert (codes[4:] == codes[:-4]).all() and len(set(codes.tolist())) > 1


def test_several_codebooks_each_code_their_own_projection():
    quantizer = RandomProjectionQuantizer(8, 60, 10, codebook_size=32, codebook_dim=4,
                                          codebooks=3, crop_norm="center")
    single = RandomProjectionQuantizer(8, 60, 10, codebook_size=32, codebook_dim=4,
                                       crop_norm="center")
    source = torch.randn(2, 8, 500)
    codes = quantizer.codes(source)
    assert codes.shape == (2, 45, 3) and int(codes.max()) < 32
    # codebook k: nearest of its own codebook rows to its own projection rows
    centred = source - source.mean(-1, keepdim=True)
    for k in range(3):
        projection = quantizer.projection[4 * k: 4 * (k + 1)]
        projected = torch.nn.functional.conv1d(centred, projection, stride=10).transpose(1, 2)
        similarity = torch.nn.functional.normalize(projected, dim=-1) @ quantizer.codebook[
            32 * k: 32 * (k + 1)].t()
        assert (similarity.argmax(-1) == codes[..., k]).float().mean() > 0.99
    # the first projection is the single codebook's draw; the codebooks differ in what they code
    torch.testing.assert_close(quantizer.projection[:4], single.projection)
    assert not torch.equal(codes[..., 0], codes[..., 1])
    # targets: the code vectors concatenated, one per codebook
    mask = torch.zeros(2, 45, dtype=torch.bool)
    mask[:, ::5] = True
    quantizer.stash(source)
    quantizer.set_mask(mask)
    out = quantizer(torch.zeros(2, 9, 7))
    picked = codes[:, ::5]
    expected = torch.cat([quantizer.codebook[32 * k + picked[..., k]] for k in range(3)], -1)
    torch.testing.assert_close(out["x"], expected)
    assert 1 < float(out["code_perplexity"]) <= 18  # mean over codebooks of 18 frames' codes


def test_codes_are_float32_codes_under_autocast():
    quantizer = RandomProjectionQuantizer(8, 60, 10, codebook_size=256, codebook_dim=4,
                                          codebooks=2)
    source = torch.randn(2, 8, 500)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = quantizer.codes(source)
    assert torch.equal(under_autocast, quantizer.codes(source))


def test_a_model_with_several_codebooks_trains_on_their_concatenation():
    model = build_meg2vec(in_channels=8, target_codebook_size=64, target_codebook_dim=8,
                          target_codebooks=4).train()
    assert model.project_q.in_features == 32
    loss, _, logging = criterion([1.0, 10], ["code_perplexity"])(model, batch())
    loss.backward()
    assert torch.isfinite(loss) and logging["code_perplexity"] > 1
    assert model.project_q.weight.grad is not None


@pytest.mark.parametrize("codebooks", [1, 3])
def test_code_classification_is_the_cross_entropy_of_masked_frames_codes(codebooks):
    model = build_meg2vec(in_channels=8, target_codebook_size=16, target_codebook_dim=4,
                          target_codebooks=codebooks, target_code_classification=True).train()
    captured = {}
    original = model.code_head.loss

    def spy(encoded, mask_indices, codes):
        captured.update(encoded=encoded, mask=mask_indices, codes=codes.clone())
        return original(encoded, mask_indices, codes)

    model.code_head.loss = spy
    net_output = model(**batch()["net_input"])
    # the last extra loss: cross-entropy of the head's logits against the masked frames' codes
    encoded, mask, codes = captured["encoded"], captured["mask"], captured["codes"]
    assert codes.shape[-1] == codebooks and mask.any() and int(codes.max()) < 16
    logits = model.code_head.head(encoded[mask]).view(-1, codebooks, 16)
    targets = codes[:, : mask.size(1)][mask]
    expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets)
    extra = model.get_extra_losses(net_output)
    assert len(extra) == 3 and extra[-1] is net_output["code_classification_loss"]
    torch.testing.assert_close(extra[-1], expected)
    accuracy = (logits.argmax(-1) == targets).float().mean()
    torch.testing.assert_close(net_output["code_classification_accuracy"], accuracy)
    # through fairseq's criterion: one more loss term, trained
    loss, _, logging = criterion([1.0, 10, 0.5], ["code_classification_accuracy"])(model, batch())
    loss.backward()
    assert "loss_2" in logging and torch.isfinite(loss)
    assert model.code_head.head.weight.grad is not None
    model.remove_pretraining_modules()
    assert model.code_head is None


def test_code_perplexity_is_real_and_diversity_has_no_gradient():
    model = build_meg2vec(in_channels=8, target_codebook_size=64).train()
    out = model(**batch()["net_input"])
    assert 1 < float(out["code_perplexity"]) <= 64
    assert not out["prob_perplexity"].requires_grad
    torch.testing.assert_close(out["prob_perplexity"], out["code_perplexity"])
    diversity = model.get_extra_losses(out)[0]
    assert not diversity.requires_grad


def test_random_projection_targets_without_the_gumbel_quantizer():
    """quantize_targets=false: the codes still replace the targets, diversity slot included."""
    model = build_meg2vec(in_channels=8, quantize_targets=False, target_codebook_size=32).train()
    assert isinstance(model.quantizer, RandomProjectionQuantizer)
    loss, _, logging = criterion([1.0, 10], ["code_perplexity"])(model, batch())
    assert torch.isfinite(loss) and logging["code_perplexity"] > 1
    loss.backward()


def test_padded_frames_are_never_targets():
    model = build_meg2vec(in_channels=8, target_codebook_size=64, negatives_max_distance=3)
    source = torch.randn(2, 8, 1000)
    padding = torch.zeros(2, 1000, dtype=torch.bool)
    padding[1, 600:] = True
    source[1, :, 600:] = 0
    seen = {}
    original = model.quantizer.set_mask

    def spy(mask_indices):
        seen["mask"] = mask_indices
        original(mask_indices)

    model.quantizer.set_mask = spy
    out = model(source, padding_mask=padding)
    frame_padding = out["padding_mask"]
    assert frame_padding[1].any() and not (seen["mask"] & frame_padding).any()


def test_centred_targets_follow_sensor_power_and_zscored_ones_do_not():
    """``crop_norm="center"``: scaling some sensors of a crop changes its codes; ``zscore``
    (each sensor z-scored over the crop) gives the same codes whatever each sensor's power."""
    source = batch(b=2, c=8, t=600)["net_input"]["source"]
    louder = source.clone()
    louder[:, :4] *= 3.0  # a sustained power change on half the sensors
    for crop_norm, same in (("zscore", True), ("center", False)):
        quantizer = RandomProjectionQuantizer(8, 10, 5, 64, 8, crop_norm=crop_norm)
        equal = torch.equal(quantizer.codes(source), quantizer.codes(louder))
        assert equal is same, crop_norm
    centred = RandomProjectionQuantizer(8, 10, 5, 64, 8, crop_norm="center")
    offset = source + 5.0  # a constant offset per sensor is still removed
    assert torch.equal(centred.codes(source), centred.codes(offset))


def test_spatial_whitening_evens_out_strong_components_and_keeps_weak_ones_small():
    """Shrinkage 1: two strong components of very different power end with similar power;
    a direction with almost no power is not blown up to that level."""
    from meg2vec_fairseq.models.targets import spatial_whitening

    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(20, 20, generator=generator))
    powers = torch.tensor([100.0, 10.0] + [1.0] * 17 + [1e-4])  # mean eigenvalue ~6.4
    sources = torch.randn(4, 20, 2000, generator=generator) * powers.sqrt()[None, :, None]
    x = torch.einsum("cs,bst->bct", basis, sources)
    x = x - x.mean(dim=-1, keepdim=True)
    whitened = spatial_whitening(x, 1.0) @ x
    component_power = torch.einsum("cs,bct->bst", basis, whitened).pow(2).mean(dim=(0, 2))
    assert component_power[0] / component_power[1] < 2  # 100 : 10 before
    assert component_power[19] < 0.01 * component_power[2]  # the silent direction stays small
    padding = torch.zeros(4, 2000, dtype=torch.bool)
    padding[1, 1500:] = True
    padded = x.clone()
    padded[1, :, 1500:] = 7.0  # padded samples must not enter the covariance
    unpadded = torch.cat([x[0], x[1, :, :1500], x[2], x[3]], dim=-1)[None]
    torch.testing.assert_close(spatial_whitening(padded, 1.0, padding),
                               spatial_whitening(unpadded, 1.0), rtol=1e-3, atol=1e-4)


def test_whitened_targets_change_the_codes_and_train():
    source = batch(b=2, c=8, t=600)["net_input"]["source"]
    plain = RandomProjectionQuantizer(8, 10, 5, 64, 8)
    whitened = RandomProjectionQuantizer(8, 10, 5, 64, 8, whiten=1.0)
    assert not torch.equal(plain.codes(source), whitened.codes(source))
    model = build_meg2vec(in_channels=8, target_codebook_size=64, target_whiten=1.0).train()
    loss, sample_size, _ = criterion([1.0, 10])(model, batch(b=2, c=8, t=600))
    assert torch.isfinite(loss) and sample_size > 0
    loss.backward()
    assert model.project_q.weight.grad.abs().sum() > 0


def test_reconstruction_targets_are_each_frames_centred_sensor_mean():
    """Without whitening, a frame's target is each sensor's crop-centred mean over the
    frame's receptive field, standardised per sensor over the batch."""
    from meg2vec_fairseq.models.reconstruction import SensorReconstructionTargets

    source = batch(b=3, c=5, t=400)["net_input"]["source"]
    head = SensorReconstructionTargets(16, 5, receptive_field=10, stride=5)
    targets = head.targets(source)
    assert targets.shape == (3, (400 - 10) // 5 + 1, 5)
    centred = source - source.mean(dim=-1, keepdim=True)
    frames = centred.unfold(-1, 10, 5).mean(dim=-1).transpose(1, 2)
    expected = (frames - frames.mean(dim=(0, 1))) / frames.std(dim=(0, 1))
    torch.testing.assert_close(targets, expected, rtol=1e-4, atol=1e-4)
    whitened = SensorReconstructionTargets(16, 5, 10, 5, whiten=1.0).targets(source)
    assert whitened.shape == targets.shape and not torch.allclose(whitened, targets)


def test_reconstruction_loss_is_the_last_extra_loss_and_trains_its_head():
    model = build_meg2vec(in_channels=8, target_codebook_size=64, target_whiten=1.0,
                          target_reconstruction=True, target_band_power="[(1,4),(8,13)]",
                          sample_rate=250).train()
    out = model(**batch()["net_input"])
    extra = model.get_extra_losses(out)
    assert len(extra) == 4  # diversity, features_pen, band power, reconstruction
    torch.testing.assert_close(extra[2], out["band_power_loss"])
    torch.testing.assert_close(extra[3], out["reconstruction_loss"])
    loss, _, logging = criterion([1.0, 10, 1.0, 2.0])(model, batch())
    assert torch.isfinite(loss) and logging["loss_3"] > 0
    loss.backward()
    assert model.reconstruction.head.weight.grad.abs().sum() > 0
    model.remove_pretraining_modules()
    assert model.reconstruction is None and model.band_power is None


def test_subspace_front_end_keeps_the_whitened_top_components_only():
    """Rank 2 of 5: the two strongest directions come out with similar power, the others are
    removed; the matrix does not depend on eigenvector signs (a projector)."""
    from meg2vec_fairseq.models.spatial_filter import PrincipalSubspaceWhitening

    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator))
    powers = torch.tensor([50.0, 5.0, 1.0, 0.5, 0.1])
    sources = torch.randn(3, 5, 3000, generator=generator) * powers.sqrt()[None, :, None]
    x = torch.einsum("cs,bst->bct", basis, sources)
    front = PrincipalSubspaceWhitening(5, rank=2, shrinkage=0.0).eval()  # batch covariance
    out = front(x)
    power = torch.einsum("cs,bct->bst", basis, out).pow(2).mean(dim=(0, 2))
    torch.testing.assert_close(power[:2], torch.ones(2), rtol=0.05, atol=0.05)
    assert power[2:].max() < 1e-4  # vs 1 for the kept ones (float32 rounding only)
    matrix = front.matrix(PrincipalSubspaceWhitening.batch_covariance(x))
    assert torch.linalg.matrix_rank(matrix) == 2
    torch.testing.assert_close(matrix, matrix.t())


def test_subspace_front_end_folds_batches_into_its_covariance_and_only_reads_it_in_forward():
    from meg2vec_fairseq.models.spatial_filter import PrincipalSubspaceWhitening

    front = PrincipalSubspaceWhitening(4, rank=2, momentum=0.5)
    first = torch.randn(2, 4, 500) * torch.tensor([3.0, 1.0, 1.0, 1.0])[None, :, None]
    front.update(first)
    torch.testing.assert_close(front.running_covariance,
                               PrincipalSubspaceWhitening.batch_covariance(first))
    second = torch.randn(2, 4, 500)
    front.update(second)  # moves half way to the second batch
    expected = 0.5 * (PrincipalSubspaceWhitening.batch_covariance(first)
                      + PrincipalSubspaceWhitening.batch_covariance(second))
    torch.testing.assert_close(front.running_covariance, expected)
    frozen = front.running_covariance.clone()
    front.train()(torch.randn(2, 4, 500) * 10)
    torch.testing.assert_close(front.running_covariance, frozen)  # forward never updates
    assert int(front.batches_seen) == 2


def test_subspace_front_end_covariance_excludes_padded_samples():
    from meg2vec_fairseq.models.spatial_filter import PrincipalSubspaceWhitening

    x = torch.randn(2, 3, 400)
    padded = torch.cat([x, torch.zeros(2, 3, 100)], dim=-1)
    mask = torch.zeros(2, 500, dtype=torch.bool)
    mask[:, 400:] = True
    torch.testing.assert_close(PrincipalSubspaceWhitening.batch_covariance(padded, mask),
                               PrincipalSubspaceWhitening.batch_covariance(x))


def test_model_with_the_subspace_front_end_trains_and_saves_its_statistics():
    model = build_meg2vec(in_channels=8, target_codebook_size=64, input_subspace_rank=4,
                          mask_sensors_prob=0.5).train()
    loss, _, _ = criterion([1.0, 10])(model, batch())
    assert torch.isfinite(loss)
    loss.backward()
    state = model.state_dict()
    assert "feature_extractor.spatial_filter.running_covariance" in state
    assert int(state["feature_extractor.spatial_filter.batches_seen"]) == 1
    # from the crops as they came, not the sensor-masked input the encoder saw
    source = batch()["net_input"]["source"]
    torch.testing.assert_close(
        state["feature_extractor.spatial_filter.running_covariance"],
        model.feature_extractor.spatial_filter.batch_covariance(source),
    )
    plain = build_meg2vec(in_channels=8, target_codebook_size=64)
    assert plain.feature_extractor.spatial_filter is None


def test_sensor_masking_does_not_reach_the_random_projection_targets():
    model = build_meg2vec(in_channels=8, target_codebook_size=64, mask_sensors_prob=0.5).train()
    source = batch()["net_input"]["source"]
    stashed = {}
    original = model.quantizer.stash
    model.quantizer.stash = lambda s, p=None: (stashed.setdefault("s", s), original(s, p))
    model(source)
    torch.testing.assert_close(stashed["s"], source)


# --------------------------------------------------------------------------- band power


def test_band_power_targets_follow_each_sensors_power_in_each_band():
    """A 10-Hz sine on sensor 0 and a 3-Hz one on sensor 1 of white noise: their bands are
    the largest targets at their sensors; frames are the conv frames."""
    rate, length = 250.0, 1500
    t = torch.arange(length) / rate
    noise = 0.1 * torch.randn(4, 3, length, generator=torch.Generator().manual_seed(0))
    loud = torch.zeros(4, 1, 1)
    loud[2:] = 1.0  # the second half of the batch carries the sines
    source = noise.clone()
    source[:, 0] += loud[:, 0] * torch.sin(2 * math.pi * 10 * t)
    source[:, 1] += loud[:, 0] * torch.sin(2 * math.pi * 3 * t)
    targets = BandPowerTargets(16, 3, [(1, 4), (8, 13)], rate, 250, 10, 5).targets(source)
    assert targets.shape == (4, (length - 10) // 5 + 1, 3 * 2)
    by_band = targets.view(4, -1, 3, 2)  # sensor-major
    middle = slice(60, -60)  # away from the crop's edges
    assert (by_band[2:, middle, 0, 1] > by_band[:2, middle, 0, 1] + 1).all()  # 10 Hz, sensor 0
    assert (by_band[2:, middle, 1, 0] > by_band[:2, middle, 1, 0] + 1).all()  # 3 Hz, sensor 1
    # the noise-only sensor does not tell the halves apart (targets are standardised per
    # sensor and band over the batch, so its values still spread at unit scale)
    assert (by_band[2:, middle, 2].mean() - by_band[:2, middle, 2].mean()).abs() < 0.5


def test_band_power_loss_is_an_extra_loss_on_masked_frames_and_trains_the_head():
    model = build_meg2vec(
        in_channels=8, sample_rate=250, target_codebook_size=64,
        target_band_power="[(1,4),(8,13)]", target_band_power_seconds=0.5,
    ).train()
    out = model(**batch()["net_input"])
    extra = model.get_extra_losses(out)
    assert len(extra) == 3 and extra[2] is out["band_power_loss"]
    assert torch.isfinite(out["band_power_loss"]) and out["band_power_loss"] > 0
    loss, _, logging = criterion([1.0, 10, 1.0])(model, batch())
    assert logging["loss_2"] > 0
    loss.backward()
    assert model.band_power.head.weight.grad.abs().sum() > 0
    assert model.feature_extractor.conv_layers[0][0].weight.grad.abs().sum() > 0
    assert not model.encoder._forward_hooks
    model.remove_pretraining_modules()
    assert model.band_power is None and not any("band_power" in k for k in model.state_dict())


# --------------------------------------------------------------------------- frame power


def test_frame_power_targets_are_each_frames_log_variance_per_sensor():
    """A frame's target is each sensor's log variance over the frame's receptive field (the
    conv frames), standardised per sensor over the batch; a burst on one sensor raises its
    targets in the frames that cover it, whatever the burst's phase."""
    from meg2vec_fairseq.models.frame_power import FramePowerTargets

    source = batch(b=3, c=5, t=400)["net_input"]["source"]
    head = FramePowerTargets(16, 5, receptive_field=10, stride=5)
    targets = head.targets(source)
    assert targets.shape == (3, (400 - 10) // 5 + 1, 5)
    frames = source.unfold(-1, 10, 5).var(dim=-1, unbiased=False).log().transpose(1, 2)
    expected = (frames - frames.mean(dim=(0, 1))) / frames.std(dim=(0, 1))
    torch.testing.assert_close(targets, expected, rtol=1e-4, atol=1e-4)
    t = torch.arange(400) / 250.0
    for phase in (0.0, math.pi / 2):
        bursty = source.clone()
        bursty[:, 2, 200:260] += 3 * torch.sin(2 * math.pi * 25 * t[200:260] + phase)
        power = head.targets(bursty)
        inside, outside = power[:, 41:49, 2], power[:, :30, 2]  # frames within / before
        assert (inside.min() > outside.max()), phase


def test_frame_power_with_mean_keeps_an_evoked_deflections_sign():
    """``with_mean``: each sensor's frame mean (standardised over the batch) comes before its
    log power; a slow deflection and its negative give the same power targets but opposite
    mean targets, so a head regressing them must keep the deflection's sign."""
    from meg2vec_fairseq.models.frame_power import FramePowerTargets

    source = batch(b=3, c=5, t=400)["net_input"]["source"]
    plain = FramePowerTargets(16, 5, receptive_field=10, stride=5)
    head = FramePowerTargets(16, 5, receptive_field=10, stride=5, with_mean=True)
    assert head.head.out_features == 10
    targets = head.targets(source)
    assert targets.shape == (3, (400 - 10) // 5 + 1, 10)
    torch.testing.assert_close(targets[..., 5:], plain.targets(source))
    means = source.unfold(-1, 10, 5).mean(dim=-1).transpose(1, 2)
    expected = (means - means.mean(dim=(0, 1))) / means.std(dim=(0, 1))
    torch.testing.assert_close(targets[..., :5], expected, rtol=1e-4, atol=1e-4)
    bump = torch.sin(math.pi * torch.arange(75) / 75.0) ** 2 * 4  # 0.3 s at 250 Hz
    up, down = source.clone(), source.clone()
    up[:, 2, 200:275] += bump
    down[:, 2, 200:275] -= bump
    up_targets, down_targets = head.targets(up), head.targets(down)
    inside = slice(45, 51)  # frames within its middle (samples 225-265)
    assert (up_targets[:, inside, 2] > 1).all() and (down_targets[:, inside, 2] < -1).all()


def test_frame_mean_whiten_lifts_a_weak_deflection_above_a_strong_shared_drift():
    """``mean_whiten``: the mean targets are the frame means of the whitened, crop-centred
    sensors. A strong slow drift common to every sensor hides a weak deflection on sensor 2 in
    its unwhitened mean target; after whitening the drift's direction is shrunk and the
    deflection's frames stand out. The power targets do not change."""
    from meg2vec_fairseq.models.frame_power import FramePowerTargets
    from meg2vec_fairseq.models.spatial_filter import centre_crops
    from meg2vec_fairseq.models.targets import spatial_whitening

    generator = torch.Generator().manual_seed(0)
    b, c, t = 4, 6, 600
    noise = 0.1 * torch.randn(b, c, t, generator=generator)
    drift = torch.cumsum(torch.randn(b, 1, t, generator=generator), dim=-1)
    drift = 5 * drift / drift.std()
    source = noise + drift * torch.linspace(0.8, 1.2, c).view(1, c, 1)
    source[:, 2, 300:375] += 0.5 * torch.sin(math.pi * torch.arange(75) / 75.0) ** 2
    plain = FramePowerTargets(16, c, receptive_field=10, stride=5, with_mean=True)
    whitened = FramePowerTargets(16, c, receptive_field=10, stride=5, with_mean=True,
                                 mean_whiten=0.1)
    torch.testing.assert_close(whitened.targets(source)[..., c:], plain.targets(source)[..., c:])
    centred, _ = centre_crops(source)
    expected = (spatial_whitening(centred, 0.1) @ centred).unfold(-1, 10, 5).mean(-1)
    expected = expected.transpose(1, 2)
    expected = (expected - expected.mean(dim=(0, 1))) / expected.std(dim=(0, 1))
    torch.testing.assert_close(whitened.targets(source)[..., :c], expected, rtol=1e-3,
                               atol=1e-3)
    inside = torch.zeros((600 - 10) // 5 + 1, dtype=torch.bool)
    inside[62:71] = True  # frames within the deflection's middle (samples 310-365)

    def contrast(head):
        values = head.targets(source)[..., 2]
        return float((values[:, inside].mean() - values[:, ~inside].mean()) / values.std())

    assert contrast(whitened) > 1.0 > 2 * contrast(plain)


def test_frame_power_whiten_lifts_a_weak_burst_above_a_strong_shared_rhythm():
    """``power_whiten``: after the means and each sensor's own power come the frame log
    variances of the whitened, crop-centred sensors. A strong 10-Hz rhythm common to every
    sensor swamps the power of a weak 25-Hz burst on sensor 2 in its own power target;
    whitened, the burst's frames stand out. The means and own powers do not change."""
    from meg2vec_fairseq.models.frame_power import FramePowerTargets
    from meg2vec_fairseq.models.sensor_power import frame_log_power
    from meg2vec_fairseq.models.spatial_filter import centre_crops
    from meg2vec_fairseq.models.targets import spatial_whitening

    source = weak_burst_under_shared_rhythm()
    b, c, t = source.shape
    plain = FramePowerTargets(16, c, receptive_field=10, stride=5, with_mean=True)
    whitened = FramePowerTargets(16, c, receptive_field=10, stride=5, with_mean=True,
                                 power_whiten=0.01)
    assert whitened.head.out_features == 3 * c
    torch.testing.assert_close(whitened.targets(source)[..., :2 * c], plain.targets(source))
    centred, _ = centre_crops(source)
    expected, _ = frame_log_power(spatial_whitening(centred, 0.01) @ centred, 10, 5)
    expected = expected.transpose(1, 2)
    expected = (expected - expected.mean(dim=(0, 1))) / expected.std(dim=(0, 1))
    torch.testing.assert_close(whitened.targets(source)[..., 2 * c:], expected, rtol=1e-3,
                               atol=1e-3)
    inside = torch.zeros((600 - 10) // 5 + 1, dtype=torch.bool)
    inside[60:74] = True  # frames within the burst (samples 300-375)

    def contrast(values):
        return float((values[:, inside].mean() - values[:, ~inside].mean()) / values.std())

    own, white = whitened.targets(source)[..., c + 2], whitened.targets(source)[..., 2 * c + 2]
    assert contrast(white) > 1.0 > 2 * contrast(own)


def test_frame_power_whiten_weight_scales_the_whitened_share_of_the_squared_error():
    """``power_whiten_weight``: the whitened powers' targets are the unit-weight ones times its
    square root, the own powers unchanged, so a linear head's loss on that block (here the
    loss of a head that predicts zeros) is the weight times the unit-weight one."""
    from meg2vec_fairseq.models.frame_power import FramePowerTargets

    source = weak_burst_under_shared_rhythm()
    c = source.shape[1]
    unit = FramePowerTargets(16, c, receptive_field=10, stride=5, power_whiten=0.01)
    light = FramePowerTargets(16, c, receptive_field=10, stride=5, power_whiten=0.01,
                              power_whiten_weight=0.25)
    unit_targets, light_targets = unit.targets(source), light.targets(source)
    torch.testing.assert_close(light_targets[..., :c], unit_targets[..., :c])
    torch.testing.assert_close(light_targets[..., c:], 0.5 * unit_targets[..., c:])
    assert float(light_targets[..., c:].pow(2).mean()) == pytest.approx(
        0.25 * float(unit_targets[..., c:].pow(2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match=r"power_whiten_weight=0\.0: must be > 0"):
        FramePowerTargets(16, c, receptive_field=10, stride=5, power_whiten=0.01,
                          power_whiten_weight=0.0)


def test_frame_power_bands_tell_a_burst_from_a_rhythm_at_another_frequency():
    """With bands, a 25-Hz burst on sensor 1 raises that sensor's 13-30 Hz frame power and not
    its 8-13 Hz one; the head regresses sensors x bands values (sensor-major)."""
    from meg2vec_fairseq.models.frame_power import FramePowerTargets

    t = torch.arange(1000) / 250.0
    source = 0.1 * torch.randn(4, 3, 1000, generator=torch.Generator().manual_seed(0))
    source[:, 1, 500:600] += torch.sin(2 * math.pi * 25 * t[500:600])
    head = FramePowerTargets(16, 3, receptive_field=20, stride=10, bands=[(8, 13), (13, 30)],
                             sample_rate=250.0)
    assert head.head.out_features == 3 * 2
    power = head.targets(source).view(4, -1, 3, 2)  # (B, frames, sensors, bands)
    burst, before = slice(51, 57), slice(10, 40)  # frames inside / well before the burst
    assert power[:, burst, 1, 1].min() > power[:, before, 1, 1].max() + 1  # 13-30 Hz
    rise = power[:, burst, 1].mean(dim=(0, 1)) - power[:, before, 1].mean(dim=(0, 1))
    assert rise[1] > 2 * rise[0]  # 13-30 Hz far more than 8-13 Hz (only spectral leakage)
    with pytest.raises(ValueError, match="sample rate"):
        FramePowerTargets(16, 3, 20, 10, bands=[(8, 13)])


def test_frame_power_loss_reads_the_conv_output_of_every_frame_and_is_the_last_loss():
    """The head reads fairseq's layer-normed conv output (the features ``--layer cnn``
    extracts), unmasked, so its gradient reaches the convolutions; its loss comes after the
    code-classification loss; the hook is removed after the forward."""
    model = build_meg2vec(in_channels=8, target_codebook_size=64,
                          target_code_classification=True, cnn_frame_power=True).train()
    captured = []
    hook = model.frame_power.head.register_forward_hook(
        lambda _m, args, _out: captured.append(args[0]))
    source = batch()["net_input"]["source"]
    out = model(source)
    hook.remove()
    extra = model.get_extra_losses(out)
    assert len(extra) == 4  # diversity, features_pen, code classification, frame power
    assert extra[2] is out["code_classification_loss"] and extra[3] is out["frame_power_loss"]
    # every frame of every sample (not only the masked ones), conv width 32
    n_frames = conv_frame_count(SMALL["conv_feature_layers"], source.shape[-1])
    assert captured[0].shape == (source.shape[0] * n_frames, 32)
    assert not model.layer_norm._forward_hooks
    loss, _, logging = criterion([1.0, 10, 1.0, 1.0])(model, batch())
    assert torch.isfinite(loss) and logging["loss_3"] > 0
    loss.backward()
    assert model.frame_power.head.weight.grad.abs().sum() > 0
    assert model.feature_extractor.conv_layers[0][0].weight.grad.abs().sum() > 0
    model.remove_pretraining_modules()
    assert model.frame_power is None and not any("frame_power" in k for k in model.state_dict())


def test_frame_power_head_learns_its_targets_on_a_toy():
    """The target is a function of the frame the convolutions see, so training on it alone
    lowers the loss well below the mean predictor's 1.0 (0.70 after 300 steps here; the
    convolutions learn power slowly). Sensor gains change every 250 samples; the LayerNorm
    extractor (shipped) keeps each frame's relative sensor power."""
    torch.manual_seed(0)
    model = build_meg2vec(in_channels=8, target_codebook_size=64, cnn_frame_power=True,
                          extractor_mode="layer_norm").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(300):
        gains = torch.rand(4, 8, 4, generator=g).repeat_interleave(250, dim=-1) * 2
        loss = model(torch.randn(4, 8, 1000, generator=g) * gains)["frame_power_loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-30:]) / 30 < 0.8 < sum(losses[:30]) / 30


def test_encoder_frame_power_reads_the_transformer_output_of_the_unmasked_frames_only():
    """``encoder_frame_power``: a second head regresses the frame-power targets from the
    Transformer's output (the features ``--layer last`` extracts) at the frames that were
    neither time-masked nor padding; its loss comes after the frame-power loss and its
    gradient reaches the Transformer; it is removed with the other pre-training heads."""
    torch.manual_seed(0)
    model = build_meg2vec(in_channels=8, target_codebook_size=64, cnn_frame_power=True,
                          encoder_frame_power=True).train()
    captured, masks = [], []
    hook = model.encoder_frame_power.head.register_forward_hook(
        lambda _m, args, _out: captured.append(args[0]))
    loss_fn = model.encoder_frame_power.loss
    model.encoder_frame_power.loss = lambda encoded, frames, targets: (
        masks.append((frames, model._mask_indices.clone())) or loss_fn(encoded, frames, targets))
    out = model(batch()["net_input"]["source"])
    hook.remove()
    frames, mask_indices = masks[0]
    assert mask_indices.any() and (frames == ~mask_indices).all()  # no padding here
    assert captured[0].shape == (int(frames.sum()), 32)  # encoder_embed_dim, unmasked frames
    extra = model.get_extra_losses(out)
    assert len(extra) == 4  # diversity, features_pen, frame power, encoder frame power
    assert extra[2] is out["frame_power_loss"] and extra[3] is out["encoder_frame_power_loss"]
    assert not model.encoder._forward_hooks
    del model.encoder_frame_power.loss
    loss, _, logging = criterion([1.0, 10, 1.0, 1.0])(model, batch())
    assert torch.isfinite(loss) and logging["loss_3"] > 0
    loss.backward()
    assert model.encoder_frame_power.head.weight.grad.abs().sum() > 0
    assert model.encoder.layers[-1].fc2.weight.grad.abs().sum() > 0
    model.remove_pretraining_modules()
    assert model.encoder_frame_power is None
    assert not any("frame_power" in k for k in model.state_dict())


def test_encoder_frame_power_whiten_false_narrows_the_transformer_head_to_the_own_powers():
    """``encoder_frame_power_whiten=False``: the convolutions' head regresses own and whitened
    powers (sensors x 2), the Transformer's head the own powers only, scored against the
    targets' first half; the extra losses stay the same four."""
    torch.manual_seed(0)
    model = build_meg2vec(in_channels=8, target_codebook_size=64, cnn_frame_power=True,
                          encoder_frame_power=True, frame_power_whiten=0.1,
                          encoder_frame_power_whiten=False).train()
    assert model.frame_power.head.out_features == 16
    assert model.encoder_frame_power.head.out_features == model.frame_power.own_dim == 8
    scored = []
    loss_fn = model.encoder_frame_power.loss
    model.encoder_frame_power.loss = lambda encoded, frames, targets: (
        scored.append(targets) or loss_fn(encoded, frames, targets))
    targets_fn = model.frame_power.targets
    full = []
    model.frame_power.targets = lambda *args: full.append(targets_fn(*args)) or full[-1]
    out = model(batch()["net_input"]["source"])
    torch.testing.assert_close(scored[0], full[0][..., :8])
    assert len(model.get_extra_losses(out)) == 4
    del model.encoder_frame_power.loss, model.frame_power.targets
    loss, _, logging = criterion([1.0, 10, 1.0, 1.0])(model, batch())
    assert torch.isfinite(loss) and logging["loss_3"] > 0


def test_encoder_frame_power_whiten_layer_reads_the_whitened_powers_from_that_layer():
    """``encoder_frame_power_whiten_layer=k``: the Transformer's frame-power head regresses
    the means and own powers from the last layer and the whitened powers from layer k's
    output; the one loss is the mean over all targets, its whitened part sends no gradient
    into the layers above k, and the extra losses stay the same four."""
    torch.manual_seed(0)
    model = build_meg2vec(in_channels=8, target_codebook_size=64, cnn_frame_power=True,
                          encoder_frame_power=True, frame_power_whiten=0.1,
                          encoder_frame_power_whiten_layer=1).train()
    assert model.encoder_frame_power.head.out_features == model.frame_power.own_dim == 8
    assert model.encoder_frame_power_whitened.head.out_features == 8
    read = {}
    for name, head in (("own", model.encoder_frame_power),
                       ("whitened", model.encoder_frame_power_whitened)):
        head.head.register_forward_hook(
            lambda _m, args, out, name=name: read.update({name: (args[0], out)}))
    layer_out, last_out = [], []
    model.encoder.layers[0].register_forward_hook(
        lambda _m, _args, out: layer_out.append(out[0].transpose(0, 1)))
    model.encoder.register_forward_hook(lambda _m, _args, out: last_out.append(out[0]))
    targets_fn = model.frame_power.targets
    full = []
    model.frame_power.targets = lambda *args: full.append(targets_fn(*args)) or full[-1]
    unmasked_fn, scored = model._unmasked_frames, []
    model._unmasked_frames = lambda *args: scored.append(unmasked_fn(*args)) or scored[-1]
    out = model(batch()["net_input"]["source"])
    frames = scored[0]
    assert 0 < int(frames.sum()) < frames.numel()  # the unmasked frames only
    torch.testing.assert_close(read["own"][0], last_out[0][frames])
    torch.testing.assert_close(read["whitened"][0],
                               layer_out[0][:, : last_out[0].size(1)][frames])
    targets = full[0][:, : last_out[0].size(1)][frames].float()
    own_error = (read["own"][1] - targets[:, :8]) ** 2
    whitened_error = (read["whitened"][1] - targets[:, 8:]) ** 2
    torch.testing.assert_close(out["encoder_frame_power_loss"],
                               torch.cat([own_error, whitened_error], dim=1).mean())
    assert len(model.get_extra_losses(out)) == 4
    model.zero_grad()
    whitened_error.mean().backward()
    assert model.encoder.layers[0].fc2.weight.grad.abs().sum() > 0
    assert model.encoder.layers[1].fc2.weight.grad is None
    del model.frame_power.targets, model._unmasked_frames
    model.remove_pretraining_modules()
    assert model.encoder_frame_power_whitened is None
    assert not any("frame_power" in k for k in model.state_dict())


def test_frame_power_with_mean_doubles_both_heads_and_adds_no_loss():
    """``frame_power_with_mean``: the CNN and encoder frame-power heads regress sensors x 2
    values (means, then powers); the extra losses stay the same four."""
    torch.manual_seed(0)
    model = build_meg2vec(in_channels=8, target_codebook_size=64, cnn_frame_power=True,
                          encoder_frame_power=True, frame_power_with_mean=True).train()
    assert model.frame_power.head.out_features == 16
    assert model.encoder_frame_power.head.out_features == 16
    assert model.extra_loss_names() == build_meg2vec(
        in_channels=8, target_codebook_size=64, cnn_frame_power=True,
        encoder_frame_power=True).extra_loss_names()
    loss, _, logging = criterion([1.0, 10, 1.0, 1.0])(model, batch())
    assert torch.isfinite(loss) and logging["loss_2"] > 0 and logging["loss_3"] > 0
    loss.backward()
    assert model.frame_power.head.weight.grad[:8].abs().sum() > 0  # the mean rows learn


def test_encoder_frame_power_skips_padded_frames():
    model = build_meg2vec(in_channels=8, target_codebook_size=64, cnn_frame_power=True,
                          encoder_frame_power=True)
    model._mask_indices = torch.tensor([[True, False, False, False], [False, True, False, False]])
    padding = torch.tensor([[False, False, False, True], [False, False, True, True]])
    frames = model._unmasked_frames(torch.zeros(2, 4, 32), padding)
    assert frames.tolist() == [[False, True, True, False], [True, False, False, False]]
    model._mask_indices = None
    assert model._unmasked_frames(torch.zeros(2, 4, 32), None).all()


# --------------------------------------------------------------------------- negatives


def frame_ids(bsz, tsz, dim=3):
    """y whose feature 0 is the frame's rank and feature 1 its sample."""
    y = torch.zeros(bsz, tsz, dim)
    y[..., 0] = torch.arange(tsz, dtype=torch.float32)
    y[..., 1] = torch.arange(bsz, dtype=torch.float32).unsqueeze(1)
    return y


def test_near_negatives_are_within_the_distance_and_never_the_positive():
    model = build_meg2vec(in_channels=8, negatives_max_distance=3, num_negatives=10)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, [0, 1, 2, 10, 11, 12, 13, 30, 31, 39]] = True
    mask[1, [5, 6, 7, 8, 9, 20, 21, 22, 23, 24]] = True
    model._mask_indices = mask
    y = frame_ids(2, 10)
    negs, neg_idxs = model.sample_negatives(y, 10)
    assert negs.shape == (10, 2, 10, 3) and neg_idxs.shape == (2, 100)
    torch.testing.assert_close(
        negs, y.reshape(-1, 3)[neg_idxs.view(-1)].view(2, 10, 10, 3).permute(2, 0, 1, 3)
    )
    positions = mask.nonzero()[:, 1].view(2, 10)
    for b in range(2):
        assert (negs[:, b, :, 1] == b).all()  # from the same sample
        rank = negs[:, b, :, 0].long()  # (N, num)
        distance = (positions[b][rank] - positions[b].unsqueeze(0)).abs()
        assert (rank != torch.arange(10)).all()
        assert (distance > 0).all()
        near = distance[:, :9] if b == 0 else distance  # sample 0's frame 39 is checked below
        assert (near <= 3).all()
    # frame 39 of sample 0 has no masked neighbour within 3: its nearest other (31) is used
    last = negs[:, 0, 9, 0].long()
    assert (positions[0][last] == 31).all()


def test_near_negatives_sample_uniformly_among_the_allowed_frames():
    model = build_meg2vec(in_channels=8, negatives_max_distance=2, num_negatives=4000)
    model._mask_indices = torch.ones(1, 20, dtype=torch.bool)
    negs, _ = model.sample_negatives(frame_ids(1, 20), 20)
    offsets = negs[:, 0, 10, 0] - 10
    counts = torch.stack([(offsets == d).sum() for d in (-2, -1, 1, 2)]).float()
    assert set(offsets.long().tolist()) == {-2, -1, 1, 2}
    assert (counts / counts.sum() - 0.25).abs().max() < 0.04
    assert set((negs[:, 0, 0, 0]).long().tolist()) == {1, 2}  # edge: only one side


def test_default_negatives_are_fairseqs():
    model = build_meg2vec(in_channels=8, num_negatives=5)
    y = torch.randn(2, 30, 4)
    torch.manual_seed(1)
    ours = model.sample_negatives(y, 30)
    torch.manual_seed(1)
    theirs = super(Meg2VecModel, model).sample_negatives(y, 30)
    torch.testing.assert_close(ours[0], theirs[0])


def test_near_negatives_train_through_the_criterion():
    model = build_meg2vec(in_channels=8, negatives_max_distance=2, mask_prob=0.5).train()
    loss, _, logging = criterion([1.0, 10])(model, batch())
    assert torch.isfinite(loss)
    loss.backward()


# --------------------------------------------------------------------------- sensor masking


def test_sensor_masking_zeroes_the_share_of_sensors_in_training_only():
    model = build_meg2vec(in_channels=20, mask_sensors_prob=0.25)
    seen = []
    model.feature_extractor.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    source = torch.randn(6, 20, 500)
    model.train()(source)
    zeroed = (seen[-1] == 0).all(-1)
    assert (zeroed.sum(-1) == 5).all()
    assert len({tuple(row.tolist()) for row in zeroed}) > 1  # a new subset per sample
    torch.testing.assert_close(seen[-1][~zeroed], source[~zeroed])
    with torch.no_grad():
        model.eval()(source)  # validation
    torch.testing.assert_close(seen[-1], source)
    model.train().extract_features(source, None)  # feature extraction, even in train mode
    torch.testing.assert_close(seen[-1], source)


# --------------------------------------------------------------------------- AMP


@pytest.mark.parametrize("options", [{}, ALL_ON], ids=["default", "all_on"])
def test_wav2vec_criterion_under_bf16_autocast(options):
    model = build_meg2vec(in_channels=8, mask_prob=0.3, **options).train()
    weights = [1.0, 10] + ([1.0] * 3 if options else [])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = criterion(weights)(model, batch())
    assert torch.isfinite(loss)
    loss.backward()
    grad = model.feature_extractor.conv_layers[0][0].weight.grad
    assert grad is not None and torch.isfinite(grad).all()


SHIPPED = dict(extractor_mode="layer_norm", target_codebook_size=64, mask_sensors_prob=0.3)


@pytest.mark.parametrize(
    "options",
    [SHIPPED, ALL_ON, {**ALL_ON, "pretext_separate_view": True,
                       "target_band_power": "[(1,4),(8,13)]"}],
    ids=["shipped", "all_on", "all_on_separate_band_power"],
)
def test_model_in_bfloat16_trains(options):
    """``common.bf16=true`` casts the model and the batch to bfloat16 (fairseq's trainer):
    the frozen targets, transforms and heads follow the model's dtype."""
    model = build_meg2vec(in_channels=8, mask_prob=0.3, **options).train().to(torch.bfloat16)
    sample = batch()
    sample["net_input"]["source"] = sample["net_input"]["source"].to(torch.bfloat16)
    out = model(**sample["net_input"])
    weights = [1.0] * len(model.get_extra_losses(out))
    loss, _, logging = criterion(weights)(model, sample)
    assert torch.isfinite(loss)
    loss.backward()
    grad = model.feature_extractor.conv_layers[0][0].weight.grad
    assert grad is not None and torch.isfinite(grad.float()).all()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"pretext_band_stop": "[(1,4),(100,130)]"},
            r"pretext_band_stop band \(100, 130\).*Nyquist",
        ),
        ({"pretext_band_stop": "[(4,1),(8,13)]"}, r"pretext_band_stop band \(4, 1\)"),
        ({"pretext_band_stop": "[(1,4)]"}, "at least 2 bands"),
        ({"pretext_band_stop": "1-4 Hz"}, "pretext_band_stop='1-4 Hz'"),
        ({"pretext_sensor_fraction": 1.0}, r"pretext_sensor_fraction=1\.0"),
        ({"pretext_sensor_fraction": 0.0}, r"pretext_sensor_fraction=0\.0"),
        ({"pretext_phase_shift_classes": 1}, "pretext_phase_shift_classes=1"),
        ({"pretext_amplitude_scale_classes": -2}, "pretext_amplitude_scale_classes=-2"),
        ({"pretext_amplitude_scale_max": 0.5}, "pretext_amplitude_scale_max=0.5"),
        ({"negatives_max_distance": -1}, "negatives_max_distance=-1"),
        ({"negatives_max_distance": 3, "cross_sample_negatives": 2}, "cross_sample_negatives"),
        ({"mask_sensors_prob": 1.0}, r"mask_sensors_prob=1\.0"),
        ({"target_codebook_size": 1}, "target_codebook_size=1"),
        ({"target_codebook_size": 8, "codebook_negatives": 2}, "codebook_negatives"),
        ({"target_codebook_dim": 0, "target_codebook_size": 8}, "target_codebook_dim=0"),
        ({"target_codebooks": 0, "target_codebook_size": 8}, "target_codebooks=0: must be >= 1"),
        ({"target_code_classification": True}, "target_code_classification=True needs"),
        ({"target_crop_norm": "robust", "target_codebook_size": 8}, "target_crop_norm='robust'"),
        ({"target_whiten": -1.0, "target_codebook_size": 8}, r"target_whiten=-1\.0"),
        ({"input_subspace_rank": 9}, r"input_subspace_rank=9: must be in 0\.\.8"),
        ({"input_subspace_rank": -1}, "input_subspace_rank=-1"),
        ({"input_subspace_rank": 4, "input_subspace_shrinkage": -0.5},
         r"input_subspace_shrinkage=-0\.5"),
        ({"target_whiten": 1.0}, r"target_whiten=1\.0 needs the random-projection targets"),
        ({"target_band_power": "[(1,4),(100,130)]"}, r"target_band_power band \(100, 130\)"),
        ({"target_band_power": "1-4"}, "target_band_power='1-4'"),
        ({"target_band_power": "[(1,4)]", "target_band_power_seconds": 0.0},
         "target_band_power_seconds=0.0"),
        ({"cnn_frame_power": True, "cnn_frame_power_bands": "[(8,13),(100,130)]"},
         r"cnn_frame_power_bands band \(100, 130\).*Nyquist"),
        ({"cnn_frame_power": True, "cnn_frame_power_bands": "8-13"},
         "cnn_frame_power_bands='8-13'"),
        ({"sensor_power_path": True, "sensor_power_path_bands": "[(8,13),(100,130)]"},
         r"sensor_power_path_bands band \(100, 130\).*Nyquist"),
        ({"sensor_power_path": True, "sensor_power_path_bands": "8-13"},
         "sensor_power_path_bands='8-13'"),
        ({"encoder_frame_power": True}, "encoder_frame_power=True needs cnn_frame_power=True"),
        ({"frame_power_with_mean": True},
         "frame_power_with_mean=True needs cnn_frame_power=True"),
        ({"cnn_frame_power": True, "frame_mean_whiten": 1.0},
         r"frame_mean_whiten=1\.0 needs frame_power_with_mean=True"),
        ({"cnn_frame_power": True, "frame_power_with_mean": True, "frame_mean_whiten": -0.5},
         r"frame_mean_whiten=-0\.5: must be >= 0"),
        ({"frame_power_whiten": 0.5},
         r"frame_power_whiten=0\.5 needs cnn_frame_power=True"),
        ({"cnn_frame_power": True, "frame_power_whiten": -1.0},
         r"frame_power_whiten=-1\.0: must be >= 0"),
        ({"cnn_frame_power": True, "encoder_frame_power": True,
          "encoder_frame_power_whiten": False},
         "encoder_frame_power_whiten=False needs frame_power_whiten > 0 and "
         "encoder_frame_power=True"),
        ({"cnn_frame_power": True, "encoder_frame_power": True, "frame_power_whiten": 0.1,
          "encoder_frame_power_whiten_layer": 2},
         r"encoder_frame_power_whiten_layer=2: must be a Transformer layer 1\.\.1"),
        ({"cnn_frame_power": True, "encoder_frame_power": True, "frame_power_whiten": 0.1,
          "encoder_frame_power_whiten_layer": -1},
         r"encoder_frame_power_whiten_layer=-1: must be a Transformer layer"),
        ({"cnn_frame_power": True, "encoder_frame_power": True,
          "encoder_frame_power_whiten_layer": 1},
         "encoder_frame_power_whiten_layer=1 needs frame_power_whiten > 0, "
         "encoder_frame_power=True and encoder_frame_power_whiten=True"),
        ({"cnn_frame_power": True, "frame_power_whiten_weight": 0.5},
         r"frame_power_whiten_weight=0\.5 needs frame_power_whiten > 0"),
        ({"cnn_frame_power": True, "frame_power_whiten": 0.1, "frame_power_whiten_weight": -1.0},
         r"frame_power_whiten_weight=-1\.0: must be > 0"),
        ({"cnn_frame_power_before_path": True, "sensor_power_path": True},
         "cnn_frame_power_before_path=True needs sensor_power_path=True and cnn_frame_power"),
        ({"cnn_frame_power_before_path": True, "cnn_frame_power": True},
         "cnn_frame_power_before_path=True needs sensor_power_path=True"),
        ({"sensor_power_path_bands": "[(8,13)]"},
         r"sensor_power_path_bands='\[\(8,13\)\]' needs sensor_power_path=True"),
        ({"sensor_power_path_whiten": 0.1},
         r"sensor_power_path_whiten=0\.1 needs sensor_power_path=True"),
        ({"sensor_power_path": True, "sensor_power_path_whiten": -0.1},
         r"sensor_power_path_whiten=-0\.1: must be >= 0"),
        ({"sensor_power_path": True, "sensor_power_path_whiten": 0.1,
          "input_subspace_rank": 4},
         r"sensor_power_path_whiten=0\.1 with input_subspace_rank=4"),
        ({"conv_residual": True, "conv_feature_layers": "[(32, 10, 5), (16, 3, 2)]"},
         r"conv_residual=True: convolution 2 of conv_feature_layers maps dim 32 to 16"),
    ],
)
def test_bad_options_are_one_line_errors_at_build(options, message):
    with pytest.raises(ValueError, match=message) as err:
        build_meg2vec(in_channels=8, sample_rate=250, **options)
    assert "\n" not in str(err.value)


class TaskStub:
    def __init__(self, sample_rate):
        self.cfg = OmegaConf.create({"sample_rate": sample_rate, "in_channels": 8})


def test_a_pretext_option_refuses_a_task_at_another_sample_rate():
    cfg = OmegaConf.structured(
        Meg2VecConfig(in_channels=8, sample_rate=500, pretext_phase_shift_classes=2, **SMALL)
    )
    with pytest.raises(ValueError, match=r"model.sample_rate=500 but task.sample_rate=250") as err:
        Meg2VecModel.build_model(cfg, TaskStub(250))
    assert "\n" not in str(err.value)
    assert isinstance(Meg2VecModel.build_model(cfg, TaskStub(500)), Meg2VecModel)
    bands = OmegaConf.structured(
        Meg2VecConfig(in_channels=8, sample_rate=500, target_band_power="[(1,4)]", **SMALL)
    )
    with pytest.raises(ValueError, match=r"model.sample_rate=500 but task.sample_rate=250"):
        Meg2VecModel.build_model(bands, TaskStub(250))
    frame_bands = OmegaConf.structured(Meg2VecConfig(
        in_channels=8, sample_rate=500, cnn_frame_power=True, cnn_frame_power_bands="[(8,13)]",
        **SMALL))
    with pytest.raises(ValueError, match=r"model.sample_rate=500 but task.sample_rate=250"):
        Meg2VecModel.build_model(frame_bands, TaskStub(250))
    path_bands = OmegaConf.structured(Meg2VecConfig(
        in_channels=8, sample_rate=500, sensor_power_path=True,
        sensor_power_path_bands="[(8,13)]", **SMALL))
    with pytest.raises(ValueError, match=r"model.sample_rate=500 but task.sample_rate=250"):
        Meg2VecModel.build_model(path_bands, TaskStub(250))
    # without options in Hz the rate is not read (e.g. features at another rate)
    plain = OmegaConf.structured(Meg2VecConfig(in_channels=8, sample_rate=500, **SMALL))
    assert isinstance(Meg2VecModel.build_model(plain, TaskStub(250)), Meg2VecModel)


def test_band_stop_needs_a_sample_rate():
    with pytest.raises(ValueError, match="model.sample_rate is needed"):
        build_meg2vec(in_channels=8, pretext_band_stop="[(1,4),(8,13)]")


def test_configs_without_the_new_fields_still_build():
    """An old checkpoint's model config (no objective fields) merges as fairseq does it."""
    root = OmegaConf.create(
        {
            "task": {"sample_rate": 250, "in_channels": 8},
            "model": {"_name": "meg2vec", "in_channels": 8, **SMALL},
        }
    )
    cfg = merge_with_parent(Meg2VecConfig(), root.model)
    assert cfg.negatives_max_distance == 0 and cfg.sample_rate == 250
    model = Meg2VecModel.build_model(cfg, TaskStub(250))
    reference = build_meg2vec(in_channels=8)
    model.load_state_dict(reference.state_dict())  # strict: same modules as before


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_hydra_train_with_every_objective_on(tmp_path):
    from meg2vec_fairseq.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(
        str(data), n_recordings=2, seconds_per_recording=10, n_valid_recordings=1, seed=5
    )
    log_keys = ["prob_perplexity", "code_perplexity", "temp", *ACCURACY_KEYS]
    # The shipped yamls list every objective field, so plain "model.<field>=" overrides work;
    # weights: diversity, feature penalty, three pretext heads, the shipped frame power.
    # fmt: off
    command = [
        "fairseq-hydra-train", "--config-dir", "config/pretraining", "--config-name",
        "meg2vec_tiny", "common.user_dir=meg2vec_fairseq", f"task.data={data}",
        f"checkpoint.save_dir={tmp_path / 'checkpoints'}", "optimization.max_update=5",
        "common.log_interval=1", "dataset.validate_interval=1",
        "model.pretext_band_stop='[(1,4),(8,13),(13,30)]'",
        "model.pretext_phase_shift_classes=4", "model.pretext_amplitude_scale_classes=5",
        "model.target_codebook_size=256", "model.negatives_max_distance=10",
        "model.mask_sensors_prob=0.2",
        "criterion.loss_weights=[1.0,10,1.0,1.0,1.0,1.0,1.0]",
        f"criterion.log_keys=[{','.join(log_keys)}]",
    ]
    # fmt: on
    result = run_command(command, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    train = parse_fairseq_log(log, "train")
    valid = parse_fairseq_log(log, "valid")
    assert train and train[-1]["num_updates"] == 5
    for stats in (train[-1], valid[-1]):
        assert np.isfinite(stats["loss"])
        for key in [*ACCURACY_KEYS, "code_perplexity"]:
            assert key in stats and np.isfinite(stats[key]), key
