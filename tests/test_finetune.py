"""Fine-tuning an encoder + linear head on labelled windows (meg2vec_fairseq.probing.finetune)."""

import csv

import numpy as np
import pytest
import torch

from meg2vec_fairseq.conv_geometry import conv_frame_count, conv_frame_geometry
from meg2vec_fairseq.probing.classifier import fit_linear_probe, stratified_subset
from meg2vec_fairseq.probing.finetune import FinetuneOptions, finetune, read_windows
from meg2vec_fairseq.probing.metrics import chance_levels, confusion_matrix
from meg2vec_fairseq.probing.sources import build_random_model
from meg2vec_fairseq.probing.windows import load_manifest_labels
from meg2vec_fairseq.synthetic import SyntheticMEGConfig, write_synthetic_dataset

N_CHANNELS = 16
TINY_YAML = """\
task:
  in_channels: 16
  normalize: false
model:
  _name: meg2vec
  conv_feature_layers: "[(32, 10, 5), (32, 3, 2)]"
  encoder_layers: 1
  encoder_embed_dim: 32
  encoder_ffn_embed_dim: 64
  encoder_attention_heads: 2
  conv_pos: 16
  conv_pos_groups: 4
  latent_vars: 16
  latent_groups: 2
  final_dim: 16
  dropout: 0.0
  dropout_input: 0.0
  dropout_features: 0.0
  attention_dropout: 0.0
  activation_dropout: 0.0
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """High-SNR synthetic events (2 kinds, 16 sensors), one 0.5-s window per event plus 0.25 s
    of context, split by recording; and a tiny architecture yaml."""
    root = tmp_path_factory.mktemp("finetune")
    config = SyntheticMEGConfig(n_channels=N_CHANNELS, n_event_kinds=2, event_snr=10.0,
                                events_per_second=1.5)
    write_synthetic_dataset(str(root), n_recordings=6, seconds_per_recording=20,
                            n_valid_recordings=0, seed=0, config=config)
    with open(root / "events.tsv") as f:
        events = list(csv.DictReader(f, delimiter="\t"))
    splits = {0: "train", 1: "train", 2: "train", 3: "valid", 4: "test", 5: "test"}
    with open(root / "labels.tsv", "w") as f:
        f.write("segment\tstart\tend\tlabel\tsplit\n")
        for event in events:
            onset = int(event["onset_sample"]) / 250.0
            if 0.25 <= onset <= 4.25:  # full context inside the 5-s segment
                recording = int(event["segment"].split("/")[1][4:])
                f.write(f"{event['segment']}\t{onset:.3f}\t{onset + 0.5:.3f}\t"
                        f"kind{event['kind']}\t{splits[recording]}\n")
    yaml = root / "tiny.yaml"
    yaml.write_text(TINY_YAML)
    dataset = load_manifest_labels(str(root / "train.tsv"), str(root / "labels.tsv"),
                                   context=0.25)
    return dataset, str(yaml)


def test_finetuning_a_random_init_tiny_model_beats_chance(toy):
    dataset, yaml = toy
    model, normalize = build_random_model(yaml, seed=0)
    options = FinetuneOptions(epochs=8, batch_size=16, lr_encoder=1e-3, lr_head=3e-3,
                              probe_init=False, pooling="mean")  # fine-tuning alone learns
    result = finetune(dataset, model, normalize, 1.0, seed=0, options=options)
    chance = chance_levels(dataset.labels("test"), 2)
    assert result["balanced_accuracy"] > chance["balanced_accuracy"] + 0.2, result
    assert result["macro_f1"] > chance["macro_f1"] + 0.2
    assert 1 <= result["best_epoch"] <= 8 and len(result["valid_curve"]) == 8
    assert result["valid_macro_f1"] == max(result["valid_curve"])


def test_finetuning_is_deterministic_on_cpu_and_leaves_the_model_alone(toy):
    dataset, yaml = toy
    model, normalize = build_random_model(yaml, seed=2)
    windows = read_windows(dataset)
    options = FinetuneOptions(epochs=2, batch_size=16)
    first = finetune(dataset, model, normalize, 0.5, seed=4, options=options, windows=windows)
    again = finetune(dataset, model, normalize, 0.5, seed=4, options=options, windows=windows)
    assert again["valid_curve"] == first["valid_curve"]
    assert again["confusion"] == first["confusion"]
    fresh, _ = build_random_model(yaml, seed=2)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())


def test_label_fraction_takes_a_stratified_subset(toy):
    dataset, yaml = toy
    model, normalize = build_random_model(yaml, seed=1)
    labels = dataset.labels("train")
    result = finetune(dataset, model, normalize, 0.25, seed=3,
                      options=FinetuneOptions(epochs=1))
    expected = sum(max(1, int(round(0.25 * np.sum(labels == c)))) for c in np.unique(labels))
    assert result["n_train"] == expected == len(stratified_subset(labels, 0.25, 3))
    assert result["label_fraction"] == 0.25


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label_fraction": 0.0}, "label_fraction must be in (0, 1]"),
        ({"label_fraction": 1.5}, "label_fraction must be in (0, 1]"),
        ({"options": FinetuneOptions(epochs=0)}, "epochs must be a positive integer"),
        ({"options": FinetuneOptions(lr_head=-1.0)}, "lr_head must be >= 0"),
        ({"options": FinetuneOptions(layer=5)}, "layer 5 out of range"),
        ({"options": FinetuneOptions(layer=("cnn", 5))}, "layer 5 out of range"),
    ],
)
def test_bad_options_raise_one_line_value_errors(toy, kwargs, message):
    dataset, yaml = toy
    model, normalize = build_random_model(yaml, seed=0)
    with pytest.raises(ValueError) as err:
        finetune(dataset, model, normalize, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_probe_init_starts_from_the_linear_probe_and_keeps_it_unless_an_epoch_beats_it(toy):
    """LP-FT: with nothing trainable (both learning rates 0) the run is the linear probe of
    the initial encoder's pooled frames, epoch 0: the same test confusion as fitting
    :func:`fit_linear_probe` on those features directly."""
    from meg2vec_fairseq.probing import finetune as ft

    dataset, yaml = toy
    model, normalize = build_random_model(yaml, seed=0)
    options = FinetuneOptions(epochs=2, batch_size=16, lr_encoder=0.0, lr_head=0.0,
                              probe_init=True, pooling="mean")
    result = finetune(dataset, model, normalize, 1.0, seed=0, options=options)
    assert len(result["valid_curve"]) == 3  # epoch 0 (the probe) + 2 epochs
    assert result["valid_curve"][0] == result["valid_curve"][1] == result["valid_curve"][2]
    assert result["best_epoch"] == 0

    classifier = ft._Classifier(model, 2, None, normalize)
    windows = read_windows(dataset)
    features = {}
    for split in ("train", "valid", "test"):
        inputs, weights = split_tensors(model, windows[split])
        features[split] = ft._pooled_features(classifier, windows[split], weights, inputs, 16)
    probe = fit_linear_probe(features["train"], dataset.labels("train"), features["valid"],
                             dataset.labels("valid"), 2, seed=0)
    expected = confusion_matrix(dataset.labels("test"), probe.predict(features["test"]), 2)
    assert result["confusion"] == expected.tolist()
    plain = finetune(dataset, model, normalize, 1.0, seed=0,
                     options=FinetuneOptions(epochs=2, batch_size=16, lr_encoder=0.0,
                                             lr_head=0.0, probe_init=False))
    assert plain["best_epoch"] >= 1 and len(plain["valid_curve"]) == 2
    # the defaults are LP-FT on mean+std pooled frames (the research log's fine-tuning result)
    default = finetune(dataset, model, normalize, 1.0, seed=0,
                       options=FinetuneOptions(epochs=1, batch_size=16, lr_encoder=0.0,
                                               lr_head=0.0))
    assert len(default["valid_curve"]) == 2 and default["best_epoch"] == 0
    assert FinetuneOptions().pooling == "meanstd"


def split_tensors(model, arrays):
    """The inputs and pooling weights of one split's window groups, as ``finetune`` makes them."""
    from meg2vec_fairseq.probing import finetune as ft

    geometry = conv_frame_geometry(model.cfg.conv_feature_layers)
    inputs, weights = [], []
    for x, _y, pools, _order in arrays.groups:
        n_frames = conv_frame_count(model.cfg.conv_feature_layers, x.shape[-1])
        w = ft._pool_weights(pools, n_frames, *geometry)
        inputs.append(torch.from_numpy(x))
        weights.append(torch.from_numpy(w.astype(np.float32)))
    return inputs, weights


def test_pooling_chosen_windows_gives_their_rows_of_the_whole_split(toy):
    """LP-FT's first step pools only the labelled subset: the same features, in the order
    asked for, as pooling every window and taking those rows."""
    from meg2vec_fairseq.probing import finetune as ft

    dataset, yaml = toy
    model, normalize = build_random_model(yaml, seed=0)
    classifier = ft._Classifier(model, 2, None, normalize, pooling="meanstd")
    arrays = read_windows(dataset)["train"]
    inputs, weights = split_tensors(model, arrays)
    everything = ft._pooled_features(classifier, arrays, weights, inputs, 4)
    chosen = np.random.default_rng(0).permutation(arrays.n)[: arrays.n // 3]
    some = ft._pooled_features(classifier, arrays, weights, inputs, 4, indices=chosen)
    assert some.shape == (len(chosen), everything.shape[1])
    np.testing.assert_allclose(some, everything[chosen], rtol=1e-5, atol=1e-5)


def test_meanstd_pooling_reads_each_feature_s_mean_and_std_over_the_span():
    """The head sees ``[mean, std]`` of the selected frames, as the linear probe's pooling."""
    from meg2vec_fairseq.probing import finetune as ft

    class Frames(torch.nn.Module):  # stands in for the encoder: the input's frames as-is
        cfg = type("cfg", (), {"encoder_embed_dim": 3, "conv_feature_layers": "[(3, 1, 1)]"})

        def extract_features(self, x, padding_mask, mask, layer):
            return {"x": x}

    classifier = ft._Classifier(Frames(), 2, None, False, pooling="meanstd")
    assert classifier.head.in_features == 6
    frames = torch.randn(2, 5, 3)
    weights = torch.tensor([[0, 0.5, 0.5, 0, 0], [0.25, 0.25, 0.25, 0.25, 0]])
    pooled = classifier.pooled(frames, weights)
    for b, chosen in enumerate((frames[0, 1:3], frames[1, :4])):
        torch.testing.assert_close(pooled[b, :3], chosen.mean(0))
        torch.testing.assert_close(pooled[b, 3:], chosen.std(0, unbiased=False), atol=1e-4,
                                   rtol=1e-4)
    with pytest.raises(ValueError, match="pooling must be one of mean, meanstd, got 'max'"):
        FinetuneOptions(pooling="max").check()


def test_finetuning_reads_several_depths_side_by_side(toy):
    """``layer=("cnn", None)``: the head sees the pooled conv output and last layer together
    (the single depths' pooled features side by side), and fine-tuning runs on them."""
    from meg2vec_fairseq.probing import finetune as ft

    dataset, yaml = toy
    model, normalize = build_random_model(yaml, seed=0)
    windows = read_windows(dataset)
    geometry = conv_frame_geometry(model.cfg.conv_feature_layers)
    inputs, weights = [], []
    for x, _y, pools, _order in windows["valid"].groups:
        n_frames = conv_frame_count(model.cfg.conv_feature_layers, x.shape[-1])
        w = ft._pool_weights(pools, n_frames, *geometry)
        inputs.append(torch.from_numpy(x))
        weights.append(torch.from_numpy(w.astype(np.float32)))

    def pooled(layer):
        classifier = ft._Classifier(model, 2, layer, normalize, pooling="mean")
        return classifier, ft._pooled_features(classifier, windows["valid"], weights, inputs, 16)

    combined, both = pooled(("cnn", None))
    assert combined.head.in_features == 32 + 32  # conv width 32, Transformer 32
    np.testing.assert_allclose(both, np.hstack([pooled("cnn")[1], pooled(None)[1]]),
                               rtol=1e-5, atol=1e-6)
    options = FinetuneOptions(epochs=1, batch_size=16, layer=("cnn", None))
    result = finetune(dataset, model, normalize, 1.0, seed=0, options=options)
    chance = chance_levels(dataset.labels("test"), 2)
    assert result["macro_f1"] > chance["macro_f1"] + 0.1, result
    assert len(result["valid_curve"]) == 2  # LP-FT's epoch 0 + one epoch
