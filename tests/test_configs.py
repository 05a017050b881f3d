"""The shipped configs: the objective they carry, plain wav2vec 2.0 one override line away,
and data-loader workers that let a GPU job exit."""

from pathlib import Path

import pytest
import torch
from fairseq.models.wav2vec.wav2vec2 import GumbelVectorQuantizer
from meg_fixtures import random_segments, write_manifest
from omegaconf import OmegaConf

from meg2vec_fairseq import configs
from meg2vec_fairseq.errors import InputError
from meg2vec_fairseq.models.targets import RandomProjectionQuantizer
from meg2vec_fairseq.probing import sources as pr
from meg2vec_fairseq.tasks.meg_pretraining import MegPretrainingConfig, MegPretrainingTask

CONFIGS = ("meg2vec_tiny", "meg2vec_small", "meg2vec_base")


def load(name: str):
    return configs.load_pretraining_config(name)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_objective_and_every_objective_field_listed(name):
    model = load(name).model
    assert model.target_codebook_size == 1024
    assert model.extractor_mode == "layer_norm"
    assert 0 < model.mask_sensors_prob < 1
    # centred, not z-scored, crops before the projection keep sustained power (round 18)
    assert model.target_crop_norm == "center"
    # listed (so plain `model.key=value` overrides work without '+') and off
    assert model.pretext_band_stop == ""
    assert model.pretext_phase_shift_classes == 0
    assert model.pretext_amplitude_scale_classes == 0
    # negatives within 400 ms of the positive for tiny (research log, round 27f); beyond one
    # masked span for small and base, whose 10-frame spans with 10 left small at chance
    # (round 29e-f)
    assert model.negatives_max_distance == (10 if name == "meg2vec_tiny" else 25)
    assert model.negatives_max_distance > 2 * model.mask_length
    # the convolutions keep each frame's sensor power (round 30), weight 1 after the
    # diversity and feature-penalty weights
    assert model.cnn_frame_power is True
    # ... and so does the Transformer at its unmasked frames (round 35), weight 1 last
    assert model.encoder_frame_power is True
    assert list(load(name).criterion.loss_weights)[2:] == [1.0, 1.0]
    # each sensor's frame power enters the conv output before mixing (round 31)
    assert model.sensor_power_path is True
    # ... with the powers of the whitened sensors too (rounds 39-40)
    assert model.sensor_power_path_whiten == 0.1
    # ... and the convolutions' head regresses the whitened sensors' powers, the Transformer's
    # not (round 43, with the two-depth read-out)
    assert model.frame_power_whiten == 0.1 and model.encoder_frame_power_whiten is False


@pytest.mark.parametrize("name", CONFIGS)
def test_one_loss_weight_per_extra_loss_shipped_and_plain(name, tmp_path):
    """fairseq's criterion asserts one ``criterion.loss_weights`` entry per extra loss: the
    shipped configs and their plain wav2vec 2.0 override line both match."""
    from meg2vec_fairseq.configs import PLAIN_WAV2VEC2_MODEL, plain_wav2vec2_overrides

    overrides = plain_wav2vec2_overrides(name)
    assert overrides[-1] == "criterion.loss_weights=[{},{}]".format(
        *list(load(name).criterion.loss_weights)[:2])
    for fields, weights in (({}, list(load(name).criterion.loss_weights)),
                            (PLAIN_WAV2VEC2_MODEL, list(load(name).criterion.loss_weights)[:2])):
        raw = load(name)
        raw.model.update(fields)
        path = tmp_path / f"{len(fields)}.yaml"
        OmegaConf.save(raw, path)
        model, _ = pr.build_random_model(str(path), 0, 8)
        extra = model.train().get_extra_losses(model(torch.randn(2, 8, 1250)))
        assert len(extra) == len(weights), (name, fields)
        assert len(model.extra_loss_names()) == len(extra)
        assert all(torch.is_tensor(loss) for loss in extra)


def test_the_task_refuses_loss_weights_that_do_not_match_the_extra_losses(tmp_path):
    """fairseq's criterion only asserts the count at the first update; the task checks it
    when the criterion is built, naming the losses."""
    from fairseq.criterions.wav2vec_criterion import Wav2VecCriterionConfig

    raw = load("meg2vec_tiny")
    write_manifest(tmp_path, random_segments(2, channels=8))
    task = MegPretrainingTask.setup_task(OmegaConf.merge(
        OmegaConf.structured(MegPretrainingConfig), raw.task,
        {"data": str(tmp_path), "in_channels": 8}))
    model_cfg, _ = pr.meg2vec_config(_tiny_with(tmp_path / "cfg"), in_channels=8)
    OmegaConf.set_struct(model_cfg, False)
    model_cfg._name = "meg2vec"  # how fairseq finds the model class
    model = task.build_model(model_cfg)
    names = ["diversity", "features_pen", "frame_power", "encoder_frame_power"]
    assert model.extra_loss_names() == names

    def criterion_cfg(weights):
        cfg = OmegaConf.merge(OmegaConf.structured(Wav2VecCriterionConfig),
                              {"infonce": True, "loss_weights": weights})
        OmegaConf.set_struct(cfg, False)
        cfg._name = "wav2vec"
        return cfg

    with pytest.raises(ValueError, match=r"loss_weights=\[1.0, 10.0, 1.0\] has 3 entries but "
                       r"the model has 4 extra losses \(diversity, features_pen, frame_power, "
                       r"encoder_frame_power\)"):
        task.build_criterion(criterion_cfg([1.0, 10, 1.0]))
    for weights in (list(raw.criterion.loss_weights), [1.0], None):
        assert task.build_criterion(criterion_cfg(weights)).loss_weights == weights


def _tiny_with(tmp_path: Path, **model_fields) -> str:
    raw = load("meg2vec_tiny")
    for key, value in model_fields.items():
        raw.model[key] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    OmegaConf.save(raw, path)
    return str(path)


def test_plain_wav2vec2_is_one_override_line_away(tmp_path):
    shipped, _ = pr.build_random_model(_tiny_with(tmp_path / "shipped"), 0, 16)
    plain, _ = pr.build_random_model(_tiny_with(tmp_path, **configs.PLAIN_WAV2VEC2_MODEL), 0, 16)
    assert isinstance(shipped.quantizer, RandomProjectionQuantizer)
    assert isinstance(plain.quantizer, GumbelVectorQuantizer)
    first_block = [m.feature_extractor.conv_layers[0] for m in (shipped, plain)]
    assert not any(isinstance(layer, torch.nn.GroupNorm) for layer in first_block[0])
    assert any(isinstance(layer, torch.nn.GroupNorm) for layer in first_block[1])
    assert plain.cfg.mask_sensors_prob == 0 and plain.cfg.negatives_max_distance == 0
    assert shipped.frame_power is not None and plain.frame_power is None
    assert shipped.feature_extractor.power_path is not None
    assert plain.feature_extractor.power_path is None


@pytest.mark.parametrize("name", CONFIGS)
def test_data_loader_workers_are_not_persistent(name, tmp_path):
    """fairseq's persistent workers kept GPU jobs alive after training (docs/gpu.md)."""
    task_cfg = load(name).task
    assert task_cfg.persistent_workers is False
    write_manifest(tmp_path, random_segments(2, channels=task_cfg.in_channels))
    cfg = OmegaConf.merge(OmegaConf.structured(MegPretrainingConfig), task_cfg,
                          {"data": str(tmp_path)})
    task = MegPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    iterator = task.get_batch_iterator(task.dataset("train"), max_tokens=10**6, num_workers=1)
    assert iterator.num_workers == 1
    assert iterator.persistent_workers is False


# --------------------------------------------------------------------------------------------
# The three sizes share _meg2vec_common.yaml through a hydra defaults list
# --------------------------------------------------------------------------------------------


def _leaf_keys(cfg, prefix: str = "") -> set:
    """Dotted names of the leaves of a config (values are not resolved)."""
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    keys = set()
    for key, value in cfg.items():
        if isinstance(value, dict):
            keys |= _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


@pytest.mark.parametrize("name", CONFIGS)
def test_loader_composes_as_hydra_does(name):
    """load_pretraining_config == hydra's compose API (fairseq's hydra version_base 1.1)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(configs.CONFIG_DIR), version_base="1.1"):
        expected = compose(config_name=name)
    ours = load(name)
    assert OmegaConf.to_container(ours) == OmegaConf.to_container(expected)
    assert ours.model.in_channels == 306 and ours.model._name == "meg2vec"
    assert OmegaConf.is_missing(ours.task, "data")


@pytest.mark.parametrize("name", CONFIGS)
def test_size_file_and_common_part_share_no_key(name):
    """The size file is merged first (see _meg2vec_common.yaml): a key in both is a mistake."""
    size = OmegaConf.load(configs.resolve_config_path(name))
    assert list(size.defaults) == ["_self_", "_meg2vec_common"]
    size.pop("defaults")
    common = OmegaConf.load(configs.CONFIG_DIR / "_meg2vec_common.yaml")
    assert not _leaf_keys(size) & _leaf_keys(common)
    hydra_node = {key for key in _leaf_keys(common) if key.startswith("hydra.")}
    assert _leaf_keys(load(name)) == _leaf_keys(size) | (_leaf_keys(common) - hydra_node)


def test_resolve_config_path(tmp_path):
    tiny = configs.CONFIG_DIR / "meg2vec_tiny.yaml"
    assert configs.resolve_config_path("meg2vec_tiny") == tiny
    assert configs.resolve_config_path("meg2vec_tiny.yaml") == tiny
    assert configs.resolve_config_path(str(tiny)) == tiny
    with pytest.raises(InputError, match="meg2vec_huge"):
        configs.resolve_config_path("meg2vec_huge")


def test_yaml_without_defaults_and_bad_defaults(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text("hydra:\n  run:\n    dir: .\nmodel:\n  _name: meg2vec\n")
    assert OmegaConf.to_container(configs.load_pretraining_config(plain)) == {
        "model": {"_name": "meg2vec"}}
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text("defaults:\n  - model: meg2vec\n")
    with pytest.raises(InputError, match="grouped.yaml: defaults entry"):
        configs.load_pretraining_config(grouped)
    loop = tmp_path / "loop.yaml"
    loop.write_text("defaults:\n  - loop\n")
    with pytest.raises(InputError, match="circular"):
        configs.load_pretraining_config(loop)
