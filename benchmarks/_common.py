"""Shared helpers of the benchmarks: shipped configs -> models, and timed train steps."""

import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from meg2vec_fairseq.configs import load_pretraining_config  # noqa: E402
from meg2vec_fairseq.models.meg2vec import Meg2VecConfig, Meg2VecModel  # noqa: E402


def shipped_config(name: str):
    """``config/pretraining/{name}.yaml`` composed as hydra does (interpolations unresolved)."""
    return load_pretraining_config(name)


def model_fields(name: str) -> Dict[str, object]:
    """The model section of a shipped config, without the fairseq registry name."""
    cfg = shipped_config(name)
    fields = OmegaConf.to_container(cfg.model, resolve=False)
    fields.pop("_name")
    fields["in_channels"] = cfg.task.in_channels
    return fields


def build_meg2vec(name: str, in_channels: Optional[int] = None) -> Meg2VecModel:
    """meg2vec as a shipped config builds it (``in_channels`` overrides the sensor count)."""
    fields = model_fields(name)
    if in_channels is not None:
        fields["in_channels"] = in_channels
    return Meg2VecModel(OmegaConf.structured(Meg2VecConfig(**fields)))


def build_audio_wav2vec2(name: str) -> Wav2Vec2Model:
    """fairseq's plain audio wav2vec2 with the same dimensions and conv stack (1 input channel)."""
    fields = model_fields(name)
    fields.pop("in_channels")
    return Wav2Vec2Model(OmegaConf.structured(Wav2Vec2Config(**fields)))


def build_criterion(name: str) -> Wav2vecCriterion:
    crit = shipped_config(name).criterion
    return Wav2vecCriterion(
        task=None,
        infonce=crit.infonce,
        loss_weights=list(crit.loss_weights),
        log_keys=list(crit.log_keys),
    )


def make_train_step(model, criterion, batch_fn: Callable[[], dict]) -> Callable[[], None]:
    """A closure doing one full training update (forward, loss, backward, Adam step)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = criterion(model, batch_fn())
        loss.backward()
        optimizer.step()

    return step


def time_interleaved(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int = 2):
    """Median seconds per call of each step, calls interleaved so drift hits all equally."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
