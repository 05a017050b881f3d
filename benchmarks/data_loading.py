#!/usr/bin/env python
"""Is data loading ever what the trainer waits for? Batches/s of the task vs train steps/s.

For the tiny and base configs, builds the ``meg_pretraining`` task on synthetic segments and
iterates fairseq's own epoch batch iterator (memory-mapped reads, random crops, collation)
with 0 and 2 workers; then times train steps of the same config on batches of the same
shape. Goal: loading at least 5x faster than training (on CPU).

    python benchmarks/data_loading.py --configs meg2vec_tiny meg2vec_base

Each row also gives segments/s and the bytes of one batch (``source`` and padding mask) for
each ``--wire-dtype`` (``task.wire_dtype``: ``both`` times float32 and float16 on the same
data). ``--max-tokens`` sets the batch (1250 tokens per segment: 640000 is 512 segments),
``--disk-dtype float16`` writes the segments in float16, ``--loading-only`` skips the train
steps, and ``--to-device cuda`` also moves each batch to the GPU and casts it to float32
there (as the trainer and the task do), so the loader is timed up to the model's input:

    python benchmarks/data_loading.py --configs meg2vec_base --max-tokens 640000 \\
        --wire-dtype both --workers 8 --loading-only --to-device cuda
"""

import argparse
import json
import tempfile
import time
from typing import Optional

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


def batch_bytes(batch: dict) -> int:
    """Bytes of the tensors of a batch's ``net_input`` (what crosses each process boundary)."""
    return sum(t.numel() * t.element_size() for t in batch["net_input"].values())


def loading_rate(
    data_dir: str,
    config_name: str,
    workers: int,
    max_batches: int,
    wire_dtype: str = "float32",
    max_tokens: Optional[int] = None,
    device: Optional[str] = None,
) -> dict:
    """Batches and segments per second through the task's batch iterator.

    Passes over the training set (new epochs as needed) until ``max_batches`` batches; with
    ``device``, each batch's ``source`` is also moved there and cast to float32 (synchronised
    before the clock stops).
    """
    cfg = shipped_config(config_name)
    task_cfg = OmegaConf.structured(
        MegPretrainingConfig(
            data=data_dir,
            sample_rate=cfg.task.sample_rate,
            in_channels=cfg.task.in_channels,
            max_sample_size=cfg.task.max_sample_size,
            min_sample_size=cfg.task.min_sample_size,
            wire_dtype=wire_dtype,
            tpu=False,
            seed=1,
        )
    )
    task = MegPretrainingTask(task_cfg)
    task.load_dataset("train")
    epoch_itr = task.get_batch_iterator(
        task.dataset("train"),
        max_tokens=max_tokens or cfg.dataset.max_tokens,
        max_positions=task.max_positions(),
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        num_workers=workers,
        seed=1,
    )
    start = time.perf_counter()
    batches, segments, nbytes = 0, 0, 0
    while batches < max_batches:
        for batch in epoch_itr.next_epoch_itr(shuffle=True):
            source = batch["net_input"]["source"]
            if device is not None:
                source.to(device, non_blocking=True).float()
            segments += source.shape[0]
            nbytes += batch_bytes(batch)
            batches += 1
            if batches == max_batches:
                break
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start  # includes worker start-up, as in training
    shape = tuple(batch["net_input"]["source"].shape)
    return {
        "batches_per_s": batches / elapsed,
        "segments_per_s": segments / elapsed,
        "bytes_per_batch": nbytes // batches,
        "batches": batches,
        "batch_shape": shape,
    }


def train_rate(config_name: str, batch_shape: tuple, repeats: int) -> float:
    model, criterion = build_meg2vec(config_name), build_criterion(config_name)
    batch = {"id": torch.arange(batch_shape[0]), "net_input": {"source": torch.randn(*batch_shape)}}
    step = make_train_step(model, criterion, lambda: batch)
    return 1.0 / time_interleaved({"train": step}, repeats=repeats, warmup=1)["train"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["meg2vec_tiny", "meg2vec_base"])
    parser.add_argument("--recordings", type=int, default=8, help="synthetic recordings")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per recording")
    parser.add_argument("--max-batches", type=int, default=40, help="batches timed per setting")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed train steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="data-loader worker counts to time")
    parser.add_argument("--wire-dtype", choices=["float32", "float16", "both"],
                        default="float32", help="task.wire_dtype to time (both: float32, float16)")
    parser.add_argument("--disk-dtype", choices=["float32", "float16"], default="float32",
                        help="dtype of the synthetic segments on disk")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="dataset.max_tokens (default: the config's; 1250 per segment)")
    parser.add_argument("--loading-only", action="store_true", help="skip the train steps")
    parser.add_argument("--to-device", default=None,
                        help="also move each batch to this device and cast it to float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wire_dtypes = ["float32", "float16"] if args.wire_dtype == "both" else [args.wire_dtype]
    results = []
    with tempfile.TemporaryDirectory() as data_dir:
        write_synthetic_dataset(
            data_dir,
            n_recordings=args.recordings,
            seconds_per_recording=args.seconds,
            dtype=args.disk_dtype,
        )
        for name in args.configs:
            loading = {
                (wire, w): loading_rate(data_dir, name, w, args.max_batches, wire,
                                        args.max_tokens, args.to_device)
                for wire in wire_dtypes
                for w in args.workers
            }
            first = next(iter(loading.values()))
            steps_per_s = (
                None if args.loading_only
                else train_rate(name, first["batch_shape"], args.train_repeats)
            )
            for (wire, workers), rate in loading.items():
                row = {
                    "config": name,
                    "workers": workers,
                    "batch_shape": rate["batch_shape"],
                    "loader_batches_per_s": round(rate["batches_per_s"], 2),
                }
                if steps_per_s is not None:
                    headroom = rate["batches_per_s"] / steps_per_s
                    row.update({
                        "train_steps_per_s": round(steps_per_s, 3),
                        "headroom": round(headroom, 1),
                        "met (>= 5x)": headroom >= 5,
                    })
                row.update({
                    "wire_dtype": wire,
                    "disk_dtype": args.disk_dtype,
                    "segments_per_s": round(rate["segments_per_s"], 1),
                    "bytes_per_batch": rate["bytes_per_batch"],
                    "batches_timed": rate["batches"],
                    "to_device": args.to_device,
                })
                results.append(row)
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
