#!/usr/bin/env python
"""Is data loading ever what the trainer waits for? Batches/s of the task vs train steps/s.

For the tiny and base configs, builds the ``meg_pretraining`` task on synthetic segments and
iterates fairseq's own epoch batch iterator (memory-mapped reads, random crops, collation)
with 0 and 2 workers; then times train steps of the same config on batches of the same
shape. Goal: loading at least 5x faster than training (on CPU).

    python benchmarks/data_loading.py --configs meg2vec_tiny meg2vec_base
"""

import argparse
import json
import tempfile
import time

import torch
from _common import (
    build_criterion,
    build_meg2vec,
    make_train_step,
    shipped_config,
    time_interleaved,
)
from omegaconf import OmegaConf

from meg2vec_fairseq.synthetic import write_synthetic_dataset
from meg2vec_fairseq.tasks.meg_pretraining import MegPretrainingConfig, MegPretrainingTask


def loading_rate(data_dir: str, config_name: str, workers: int, max_batches: int) -> dict:
    """Batches per second through the task's batch iterator (one pass, up to max_batches)."""
    cfg = shipped_config(config_name)
    task_cfg = OmegaConf.structured(
        MegPretrainingConfig(
            data=data_dir,
            sample_rate=cfg.task.sample_rate,
            in_channels=cfg.task.in_channels,
            max_sample_size=cfg.task.max_sample_size,
            min_sample_size=cfg.task.min_sample_size,
            tpu=False,
            seed=1,
        )
    )
    task = MegPretrainingTask(task_cfg)
    task.load_dataset("train")
    iterator = task.get_batch_iterator(
        task.dataset("train"),
        max_tokens=cfg.dataset.max_tokens,
        max_positions=task.max_positions(),
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        num_workers=workers,
        seed=1,
    ).next_epoch_itr(shuffle=True)
    start = time.perf_counter()
    batches, segments = 0, 0
    for batch in iterator:
        segments += batch["net_input"]["source"].shape[0]
        batches += 1
        if batches == max_batches:
            break
    elapsed = time.perf_counter() - start  # includes worker start-up, as in training
    shape = tuple(batch["net_input"]["source"].shape)
    return {"batches_per_s": batches / elapsed, "batches": batches, "batch_shape": shape}


def train_rate(config_name: str, batch_shape: tuple, repeats: int) -> float:
    model, criterion = build_meg2vec(config_name), build_criterion(config_name)
    batch = {"id": torch.arange(batch_shape[0]), "net_input": {"source": torch.randn(*batch_shape)}}
    step = make_train_step(model, criterion, lambda: batch)
    return 1.0 / time_interleaved({"train": step}, repeats=repeats, warmup=1)["train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", nargs="+", default=["meg2vec_tiny", "meg2vec_base"])
    parser.add_argument("--recordings", type=int, default=8, help="synthetic recordings")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per recording")
    parser.add_argument("--max-batches", type=int, default=40, help="batches timed per setting")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed train steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as data_dir:
        write_synthetic_dataset(
            data_dir, n_recordings=args.recordings, seconds_per_recording=args.seconds
        )
        for name in args.configs:
            loading = {w: loading_rate(data_dir, name, w, args.max_batches) for w in (0, 2)}
            steps_per_s = train_rate(name, loading[0]["batch_shape"], args.train_repeats)
            for workers, rate in loading.items():
                headroom = rate["batches_per_s"] / steps_per_s
                results.append(
                    {
                        "config": name,
                        "workers": workers,
                        "batch_shape": rate["batch_shape"],
                        "loader_batches_per_s": round(rate["batches_per_s"], 2),
                        "train_steps_per_s": round(steps_per_s, 3),
                        "headroom": round(headroom, 1),
                        "met (>= 5x)": headroom >= 5,
                    }
                )
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
