"""Shared helpers of the benchmarks: shipped configs -> models, and timed train steps."""

import dataclasses
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
from meg2vec_fairseq.models.meg2vec import Meg2VecModel  # noqa: E402
from meg2vec_fairseq.probing.sources import build_random_model  # noqa: E402


def shipped_config(name: str):
    """``config/pretraining/{name}.yaml`` composed as hydra does (interpolations unresolved)."""
    return load_pretraining_config(name)


def build_meg2vec(name: str, in_channels: Optional[int] = None) -> Meg2VecModel:
    """meg2vec as a shipped config builds it (``in_channels`` overrides the sensor count).

    Weights come from torch's current random state (seed it first for repeatable runs).
    """
    model, _normalize = build_random_model(name, None, in_channels)
    return model.train()


def build_audio_wav2vec2(name: str) -> Wav2Vec2Model:
    """fairseq's plain audio wav2vec2 with the same dimensions and conv stack (1 input channel).

    The model section of the shipped config, less the fields only meg2vec has (its objective,
    ``in_channels``, ``sample_rate``).
    """
    fields = OmegaConf.to_container(shipped_config(name).model, resolve=False)
    known = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
    fields = {k: v for k, v in fields.items() if k in known}
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
