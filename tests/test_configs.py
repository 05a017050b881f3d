"""The shipped configs: the objective they carry, plain wav2vec 2.0 one override line away,
and data-loader workers that let a GPU job exit."""

from pathlib import Path

import pytest
import torch
from fairseq.models.wav2vec.wav2vec2 import GumbelVectorQuantizer
from meg_fixtures import random_segments, write_manifest
from omegaconf import OmegaConf

from meg2vec_fairseq import probe as pr
from meg2vec_fairseq.models.targets import RandomProjectionQuantizer
from meg2vec_fairseq.tasks.meg_pretraining import MegPretrainingConfig, MegPretrainingTask

CONFIGS = ("meg2vec_tiny", "meg2vec_small", "meg2vec_base")
#: The override line the README and the yamls give for the seed's plain objective.
PLAIN_WAV2VEC2 = {"extractor_mode": "default", "target_codebook_size": 0, "mask_sensors_prob": 0.0}


def load(name: str):
    return OmegaConf.load(pr.resolve_config_path(name))


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_objective_and_every_objective_field_listed(name):
    model = load(name).model
    assert model.target_codebook_size == 1024
    assert model.extractor_mode == "layer_norm"
    assert 0 < model.mask_sensors_prob < 1
    # listed (so plain `model.key=value` overrides work without '+') and off
    assert model.pretext_band_stop == ""
    assert model.pretext_phase_shift_classes == 0
    assert model.pretext_amplitude_scale_classes == 0
    assert model.negatives_max_distance == 0


def _tiny_with(tmp_path: Path, **model_fields) -> str:
    raw = load("meg2vec_tiny")
    for key, value in model_fields.items():
        raw.model[key] = value
    path = tmp_path / "tiny.yaml"
    OmegaConf.save(raw, path)
    return str(path)


def test_plain_wav2vec2_is_one_override_line_away(tmp_path):
    shipped, _ = pr.build_random_model("meg2vec_tiny", 0, 16)
    plain, _ = pr.build_random_model(_tiny_with(tmp_path, **PLAIN_WAV2VEC2), 0, 16)
    assert isinstance(shipped.quantizer, RandomProjectionQuantizer)
    assert isinstance(plain.quantizer, GumbelVectorQuantizer)
    first_block = [m.feature_extractor.conv_layers[0] for m in (shipped, plain)]
    assert not any(isinstance(layer, torch.nn.GroupNorm) for layer in first_block[0])
    assert any(isinstance(layer, torch.nn.GroupNorm) for layer in first_block[1])
    assert plain.cfg.mask_sensors_prob == 0


@pytest.mark.parametrize("name", CONFIGS)
def test_data_loader_workers_are_not_persistent(name, tmp_path):
    """fairseq's persistent workers kept GPU jobs alive after training (README, GPU)."""
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
