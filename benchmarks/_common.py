"""Shared helpers of the benchmarks: shipped configs -> models, and timed train steps."""

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

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


def meg_batch(
    model: Meg2VecModel,
    batch: int,
    samples: int,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
) -> dict:
    """A random pre-training sample for ``model``: ``batch`` segments of ``samples`` samples.

    Parameters
    ----------
    model : Meg2VecModel
        The model (its ``cfg.in_channels`` gives the sensor count).
    batch, samples : int
        Segments per batch and time samples per segment.
    dtype : torch.dtype
        dtype of ``source`` (the model's parameter dtype, as the task casts it).
    device : str or torch.device
        Where the batch lives.

    Returns
    -------
    sample : dict
        ``{"id": (B,), "net_input": {"source": (B, C, T)}}``, as the wav2vec criterion reads it.
    """
    source = torch.randn(batch, model.cfg.in_channels, samples, device=device).to(dtype)
    return {"id": torch.arange(batch, device=device), "net_input": {"source": source}}


def make_train_step(
    model,
    criterion,
    batch_fn: Callable[[], dict],
    fused: bool = False,
    autocast_dtype: Optional[torch.dtype] = None,
) -> Callable[[], None]:
    """A closure doing one full training update (forward, loss, backward, Adam step).

    Parameters
    ----------
    model : torch.nn.Module
        The model, put in training mode here.
    criterion : Wav2vecCriterion
        The loss; called as ``criterion(model, sample)``.
    batch_fn : callable
        Returns the sample of each step.
    fused : bool
        ``torch.optim.Adam(fused=True)`` (one kernel for all parameters; CUDA).
    autocast_dtype : torch.dtype, optional
        Run forward and loss under ``torch.autocast`` with this dtype on the parameters'
        device type (``common.amp``); None: no autocast.

    Returns
    -------
    step : callable
        One update per call.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))
    model.train()
    device_type = next(model.parameters()).device.type

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if autocast_dtype is None:
            loss, _, _ = criterion(model, batch_fn())
        else:
            with torch.autocast(device_type, dtype=autocast_dtype):
                loss, _, _ = criterion(model, batch_fn())
        loss.backward()
        optimizer.step()

    return step


def step_seconds(
    step: Callable[[], None],
    repeats: int,
    warmup: int = 2,
    device: Union[str, torch.device] = "cpu",
) -> List[float]:
    """Seconds of each of ``repeats`` calls of ``step``, after ``warmup`` untimed calls.

    On a CUDA device each call is timed with CUDA events around it and a synchronize after
    it (GPU time of the call, the queue drained between calls); elsewhere with
    ``time.perf_counter``.

    Parameters
    ----------
    step : callable
        The work of one call.
    repeats, warmup : int
        Timed and untimed calls.
    device : str or torch.device
        Where ``step`` runs.

    Returns
    -------
    seconds : list of float
        One per timed call.
    """
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds: List[float] = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            seconds.append(start.elapsed_time(end) / 1000.0)
        else:
            begin = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - begin)
    return seconds


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
