"""Reading a model's features at a chosen depth, or several depths side by side."""

import pytest
import torch
from omegaconf import OmegaConf

from meg2vec_fairseq.features import (
    check_layer,
    extract_features,
    format_layer,
    layer_dim,
    layer_frames,
    parse_layer,
)
from meg2vec_fairseq.models.meg2vec import Meg2VecConfig, Meg2VecModel

CHANNELS = 8


@pytest.fixture(scope="module")
def model():
    """Three Transformer layers, conv output (24 wide) narrower than the Transformer (32)."""
    cfg = OmegaConf.structured(Meg2VecConfig(
        in_channels=CHANNELS, encoder_layers=3, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
        encoder_attention_heads=4, final_dim=16, conv_feature_layers="[(24, 10, 5), (24, 3, 2)]",
        conv_pos=16, conv_pos_groups=4, latent_vars=10, latent_groups=2, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, dropout_features=0.0,
    ))
    torch.manual_seed(0)
    return Meg2VecModel(cfg).eval()


@pytest.mark.parametrize("text, layer", [
    ("last", None), ("cnn", "cnn"), ("2", 2), ("cnn+last", ("cnn", None)),
    ("0+cnn+last", (0, "cnn", None)),
])
def test_parse_and_format_layer_round_trip(text, layer):
    assert parse_layer(text) == layer
    assert str(format_layer(layer)) == text


@pytest.mark.parametrize("text, message", [
    ("top", "layer must be an integer, 'last', 'cnn' or depths joined by '+', got 'top'"),
    ("cnn+", "layer must be depths joined by '+' (e.g. 'cnn+last'), got 'cnn+'"),
    ("cnn+cnn", "layer 'cnn+cnn' names a depth twice"),
    ("cnn+x", "got 'x'"),
])
def test_parse_layer_refuses_bad_text_in_one_line(text, message):
    with pytest.raises(ValueError) as err:
        parse_layer(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_combined_layers_are_the_single_depths_side_by_side(model):
    meg = torch.randn(2, CHANNELS, 500)
    cnn = extract_features(model, meg, "cnn")
    last = extract_features(model, meg, None)
    middle = extract_features(model, meg, 1)
    assert cnn.shape[-1] == 24 and last.shape[-1] == middle.shape[-1] == 32
    assert not torch.allclose(last, middle)  # the depths differ, so the order is checked

    both = extract_features(model, meg, ("cnn", None))
    torch.testing.assert_close(both, torch.cat([cnn, last], dim=-1))
    three = extract_features(model, meg, (1, "cnn", None))
    torch.testing.assert_close(three, torch.cat([middle, cnn, last], dim=-1))
    assert layer_dim(model, ("cnn", None)) == 56 and layer_dim(model, (1, "cnn", None)) == 88
    assert layer_dim(model, "cnn") == 24 and layer_dim(model, 0) == 32


def test_layer_frames_carry_gradients_into_every_depth_read(model):
    """Fine-tuning reads the frames through :func:`layer_frames`: the conv encoder gets
    gradient from both halves of a combined read-out, the Transformer only from its own."""
    meg = torch.randn(1, CHANNELS, 500)
    frames = layer_frames(model, meg, ("cnn", None))
    model.zero_grad()
    frames[..., :24].sum().backward(retain_graph=True)  # the conv half alone
    first_conv = model.feature_extractor.conv_layers[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoder.parameters())
    model.zero_grad()
    frames[..., 24:].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


@pytest.mark.parametrize("layer, message", [
    (3, "layer 3 out of range: the model has 3 Transformer layers (0..2), or use 'cnn'"),
    (("cnn", 5), "layer 5 out of range"),
    (("cnn",), "a combined read-out needs at least two distinct depths"),
    ((2, None), "layer '2+last': a combined read-out needs at least two distinct depths"),
    (True, "layer True out of range"),
])
def test_check_layer_refuses_depths_the_model_does_not_have(model, layer, message):
    with pytest.raises(ValueError) as err:
        check_layer(layer, model)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_one_model_pass_per_transformer_depth_read(model, monkeypatch):
    """The conv output comes with any pass: ``cnn+0`` and ``cnn+last`` need one pass each,
    ``0+cnn+last`` two."""
    calls = []
    original = model.extract_features

    def counted(*args, **kwargs):
        calls.append(kwargs.get("layer"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "extract_features", counted)
    meg = torch.randn(1, CHANNELS, 500)
    for layer, expected in ((("cnn", 0), [0]), (("cnn", None), [None]),
                            ((0, "cnn", None), [0, None]), ("cnn", [None])):
        calls.clear()
        extract_features(model, meg, layer)
        assert calls == expected, layer
