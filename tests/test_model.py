"""meg2vec is fairseq's wav2vec 2.0 with only the feature encoder's front changed."""

import pytest
import torch
from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
from fairseq.data.data_utils import compute_mask_indices
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from fairseq.modules import Fp32GroupNorm
from omegaconf import OmegaConf

from meg2vec_fairseq.conv_geometry import frame_rate
from meg2vec_fairseq.models.meg2vec import (
    Meg2VecConfig,
    Meg2VecModel,
    MultiChannelConvFeatureExtractor,
)

SMALL = dict(
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=4,
    final_dim=16,
    conv_feature_layers="[(32, 10, 5), (32, 3, 2)]",
    conv_pos=16,
    conv_pos_groups=4,
    quantize_targets=True,
    latent_vars=10,
    latent_groups=2,
    num_negatives=5,
    mask_prob=0.3,
    mask_length=3,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    dropout_input=0.0,
    dropout_features=0.0,
)


def build_meg2vec(in_channels: int = 306, **overrides) -> Meg2VecModel:
    cfg = OmegaConf.structured(Meg2VecConfig(in_channels=in_channels, **{**SMALL, **overrides}))
    return Meg2VecModel(cfg)


def test_pretraining_machinery_is_inherited_from_wav2vec2():
    for name in (
        "compute_preds",
        "get_logits",
        "get_targets",
        "quantize",
        "extract_features",
        "_get_feat_extract_output_lengths",
    ):
        assert getattr(Meg2VecModel, name) is getattr(Wav2Vec2Model, name), name
    # Extended for the optional objectives (tests/test_objectives.py): thin wrappers that
    # call fairseq's own method; with default options they change nothing (next test).
    for name in ("forward", "apply_mask", "sample_negatives", "get_extra_losses"):
        assert getattr(Meg2VecModel, name) is not getattr(Wav2Vec2Model, name), name
    model = build_meg2vec()
    assert isinstance(model, Wav2Vec2Model)
    assert model.quantizer.groups == 2 and model.quantizer.num_vars == 10


def test_single_channel_meg2vec_equals_wav2vec2_with_the_same_weights():
    """With in_channels=1 the model is exactly fairseq's wav2vec2: masking, quantizer, logits."""
    wav2vec2 = Wav2Vec2Model(OmegaConf.structured(Wav2Vec2Config(**SMALL)))
    meg2vec = build_meg2vec(in_channels=1)
    meg2vec.load_state_dict(wav2vec2.state_dict())  # strict: same names and shapes
    audio = torch.randn(3, 800)
    frames = int(wav2vec2._get_feat_extract_output_lengths(torch.tensor(800)))
    # fairseq draws span masks from an unseeded generator: draw one and give it to both.
    mask = torch.from_numpy(compute_mask_indices((3, frames), None, 0.3, 3, min_masks=2))

    outputs = []
    for model, source in ((wav2vec2, audio), (meg2vec, audio.unsqueeze(1))):
        torch.manual_seed(0)  # negatives and Gumbel noise are drawn with torch
        outputs.append(model(source, mask_indices=mask))
    reference, ours = outputs
    assert set(reference) == set(ours)
    for key in ("x", "features_pen", "prob_perplexity", "code_perplexity", "temp"):
        torch.testing.assert_close(ours[key], reference[key], msg=key)
    torch.testing.assert_close(meg2vec.get_logits(ours), wav2vec2.get_logits(reference))


def test_only_the_first_convolution_differs_from_audio_wav2vec2():
    wav2vec2 = Wav2Vec2Model(OmegaConf.structured(Wav2Vec2Config(**SMALL)))
    meg2vec = build_meg2vec(in_channels=306)
    audio_shapes = {k: v.shape for k, v in wav2vec2.state_dict().items()}
    meg_shapes = {k: v.shape for k, v in meg2vec.state_dict().items()}
    assert audio_shapes.keys() == meg_shapes.keys()
    differing = {k for k in audio_shapes if audio_shapes[k] != meg_shapes[k]}
    assert differing == {"feature_extractor.conv_layers.0.0.weight"}
    assert meg_shapes["feature_extractor.conv_layers.0.0.weight"] == (32, 306, 10)
    # fairseq's "default" extractor mode: GroupNorm after the first convolution only.
    first_block = meg2vec.feature_extractor.conv_layers[0]
    assert isinstance(first_block[2], Fp32GroupNorm)
    assert not any(isinstance(m, Fp32GroupNorm) for m in meg2vec.feature_extractor.conv_layers[1])


def test_wrong_channel_count_is_a_clear_error():
    model = build_meg2vec(in_channels=306)
    with pytest.raises(ValueError, match=r"\(batch, 306, time\), got \(2, 300, 500\)"):
        model(torch.randn(2, 300, 500))


STACKS = [
    "[(16, 10, 5), (16, 3, 2), (16, 3, 1), (16, 3, 1)]",  # shipped configs
    "[(16, 10, 5), (16, 3, 2), (16, 3, 2), (16, 2, 2)]",  # the seed's stack
    "[(16, 3, 1)]",
    "[(16, 7, 3), (16, 5, 2), (16, 2, 2)]",
]


@pytest.mark.parametrize("stack", STACKS)
def test_output_lengths_match_the_convolutions(stack):
    extractor = MultiChannelConvFeatureExtractor(8, eval(stack))
    model = build_meg2vec(in_channels=8, conv_feature_layers=stack, mask_prob=0.0)
    for length in (64, 333, 1250):
        actual = extractor(torch.randn(1, 8, length)).shape[-1]
        assert int(model._get_feat_extract_output_lengths(torch.tensor(length))) == actual


@pytest.mark.parametrize("stack", STACKS)
def test_residual_stack_keeps_the_output_lengths(stack):
    model = build_meg2vec(in_channels=8, conv_feature_layers=stack, conv_residual=True)
    for length in (64, 333, 1250):
        actual = model.feature_extractor(torch.randn(1, 8, length)).shape[-1]
        assert int(model._get_feat_extract_output_lengths(torch.tensor(length))) == actual


def test_residual_path_carries_the_first_layer_past_the_deeper_ones():
    stack = "[(16, 10, 5), (16, 3, 2), (16, 3, 1)]"
    source = torch.randn(2, 8, 400)
    outputs = {}
    for residual in (False, True):
        torch.manual_seed(0)
        model = build_meg2vec(in_channels=8, conv_feature_layers=stack, conv_residual=residual,
                              extractor_mode="layer_norm")
        blocks = model.feature_extractor.conv_layers
        with torch.no_grad():
            for block in blocks[1:]:  # deeper convs silent: LayerNorm(0) = 0, GELU(0) = 0
                block[0].weight.zero_()
            first = blocks[0](source)
            outputs[residual] = model.feature_extractor(source)
    assert torch.count_nonzero(outputs[False]) == 0
    # each silent block passes on its input averaged over its own window and stride
    expected = torch.nn.functional.avg_pool1d(
        torch.nn.functional.avg_pool1d(first, 3, 2), 3, 1
    )
    torch.testing.assert_close(outputs[True], expected)


@pytest.mark.parametrize("stack", STACKS)
def test_padded_batch_gives_the_right_frame_padding_mask(stack):
    model = build_meg2vec(in_channels=8, conv_feature_layers=stack).eval()
    lengths = [1250, 900, 513]
    source = torch.zeros(len(lengths), 8, max(lengths))
    padding_mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, length in enumerate(lengths):
        source[i, :, :length] = torch.randn(8, length)
        padding_mask[i, length:] = True
    out = model(source, padding_mask=padding_mask, mask=False, features_only=True)
    expected = [
        model.feature_extractor(torch.randn(1, 8, n)).shape[-1] for n in lengths
    ]  # frames of each sample alone
    assert out["x"].shape[1] == expected[0]
    assert (~out["padding_mask"]).sum(dim=1).tolist() == expected


def test_frame_rate_of_the_shipped_stack():
    assert frame_rate("[(512, 10, 5), (512, 3, 2), (512, 3, 1), (512, 3, 1)]", 250) == 25.0


def test_wav2vec_criterion_trains_the_multichannel_model():
    model = build_meg2vec(in_channels=306, mask_prob=0.2).train()
    criterion = Wav2vecCriterion(
        task=None,
        infonce=True,
        loss_weights=[0.1, 10],
        log_keys=["prob_perplexity", "code_perplexity", "temp"],
    )
    sample = {"id": torch.arange(4), "net_input": {"source": torch.randn(4, 306, 1000)}}
    loss, sample_size, logging = criterion(model, sample)
    assert torch.isfinite(loss) and sample_size > 0
    for key in ("code_perplexity", "prob_perplexity", "temp", "loss_0", "loss_1", "loss_2"):
        assert key in logging
    loss.backward()
    first_conv = model.feature_extractor.conv_layers[0][0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
