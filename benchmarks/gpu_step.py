#!/usr/bin/env python
"""Model-only train step of a shipped config: step time, FLOPs, TFLOP/s, MFU, memory (issue 10).

One setting = batch size x precision x fused Adam x ``torch.compile``; every combination of
the values given is measured, each on a freshly built model (seeded, so all see the same
weights). A step is what ``benchmarks/train_step.py`` times: zero the gradients, the
``wav2vec`` criterion on ``meg2vec`` (forward and loss), backward, Adam. No data loading: the
batch is random ``(B, 306, samples)`` already on the device.

Per setting it reports

- ``step_ms``: median step time (CUDA events and a synchronize per step on a GPU,
  ``time.perf_counter`` on CPU), after ``--warmup`` untimed steps (which also compile);
- ``flops_per_step``: FLOPs of one step's forward and backward (model and criterion) counted
  by ``torch.utils.flop_counter.FlopCounterMode`` on the eager model (matrix products,
  convolutions and attention; elementwise work and Adam are not counted, as usual for MFU);
- ``tflops_per_s`` = FLOPs / step time, and ``mfu`` = that / ``--peak-tflops``;
- ``peak_mem_gb``: ``torch.cuda.max_memory_allocated`` over the setting (None on CPU);
- ``segments_per_s`` = batch / step time.

Precision (``--dtype``, default bf16 on CUDA and float32 on CPU): ``float32``; ``bf16``:
bf16 weights and input (the issue's measurement; fairseq's ``common.bf16`` trains a bf16
model); ``amp``: float32 weights, forward and loss under bf16 autocast (``common.amp`` in
bf16). MFU is always against ``--peak-tflops``, whatever the precision. A setting that fails
(``torch.compile`` on fairseq's code, out of memory) is reported with its error and the
others still run.

    python benchmarks/gpu_step.py --config meg2vec_base --dtype bf16 --batches 32 128 512 \\
        --compile both --json gpu_step.json
    python benchmarks/gpu_step.py --config meg2vec_tiny --batches 2 --samples 500 --steps 2 \\
        --peak-tflops 1 --device cpu   # CPU smoke run
"""

import argparse
import datetime
import gc
import itertools
import json
import logging
import platform
import statistics
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch._dynamo
from _common import build_criterion, build_meg2vec, make_train_step, meg_batch, step_seconds
from torch.utils.flop_counter import FlopCounterMode

#: Dense bf16 peak TFLOP/s by a substring of ``torch.cuda.get_device_name`` (first match).
PEAK_TFLOPS: Tuple[Tuple[str, float], ...] = (("H100", 989.0), ("H200", 989.0), ("A100", 312.0))

DTYPES = ("float32", "bf16", "amp")
SWITCH = {"off": (False,), "on": (True,), "both": (False, True)}


def default_peak_tflops(device_name: str) -> Optional[float]:
    """Dense bf16 peak of a known GPU, from its name.

    Parameters
    ----------
    device_name : str
        ``torch.cuda.get_device_name()`` (or anything else: no match gives None).

    Returns
    -------
    peak : float or None
        TFLOP/s, or None when the device is not in :data:`PEAK_TFLOPS`.
    """
    for key, peak in PEAK_TFLOPS:
        if key in device_name.upper():
            return peak
    return None


def count_step_flops(model, criterion, sample: dict, autocast_dtype: Optional[torch.dtype]) -> int:
    """FLOPs of one forward and backward of ``criterion(model, sample)``.

    Parameters
    ----------
    model : torch.nn.Module
        The eager (not compiled) model, in training mode; its gradients are cleared after.
    criterion : Wav2vecCriterion
        The loss.
    sample : dict
        The batch.
    autocast_dtype : torch.dtype, optional
        Autocast dtype of the forward, as in the timed step.

    Returns
    -------
    flops : int
        ``FlopCounterMode``'s total.
    """
    device_type = next(model.parameters()).device.type
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            loss, _, _ = criterion(model, sample)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def graph_breaks() -> int:
    """torch.compile's graph breaks so far in this process."""
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


def measure(
    args: argparse.Namespace,
    device: torch.device,
    batch: int,
    dtype: str,
    fused: bool,
    compiled: bool,
    flops_cache: Dict[Tuple[str, int], int],
) -> Dict[str, object]:
    """One setting: build, count FLOPs (once per dtype and batch), warm up, time.

    Parameters
    ----------
    args : argparse.Namespace
        The command line (config, samples, steps, warmup, peak).
    device : torch.device
        Where it runs.
    batch : int
        Segments per batch.
    dtype : {"float32", "bf16", "amp"}
        Precision (see the module docstring).
    fused, compiled : bool
        ``Adam(fused=True)``; ``model.compile()``.
    flops_cache : dict
        FLOPs per ``(dtype, batch)``, filled here.

    Returns
    -------
    row : dict
        The setting and its measurements (``error`` set instead when it failed).
    """
    row: Dict[str, object] = {
        "batch": batch, "samples": args.samples, "dtype": dtype,
        "fused_adam": fused, "compile": compiled,
    }
    cuda = device.type == "cuda"
    model = criterion = step = None
    try:
        torch.manual_seed(0)
        param_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        autocast_dtype = torch.bfloat16 if dtype == "amp" else None
        model = build_meg2vec(args.config).to(device=device, dtype=param_dtype)
        criterion = build_criterion(args.config)
        sample = meg_batch(model, batch, args.samples, param_dtype, device)
        with torch.no_grad():
            frames = model.feature_extractor(sample["net_input"]["source"][:1]).shape[-1]
        row["frames"] = int(frames)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        key = (dtype, batch)
        if key not in flops_cache:
            flops_cache[key] = count_step_flops(model, criterion, sample, autocast_dtype)
        flops = flops_cache[key]
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        breaks_before = graph_breaks()
        if compiled:
            model.compile()
        step = make_train_step(model, criterion, lambda: sample, fused, autocast_dtype)
        first = step_seconds(step, repeats=1, warmup=0, device=device)[0]
        seconds = step_seconds(step, args.steps, max(args.warmup - 1, 0), device)
        median = statistics.median(seconds)
        tflops = flops / median / 1e12
        row.update(
            first_step_ms=round(first * 1e3, 2),
            step_ms=round(median * 1e3, 3),
            step_ms_min=round(min(seconds) * 1e3, 3),
            step_ms_max=round(max(seconds) * 1e3, 3),
            flops_per_step=flops,
            tflops_per_s=round(tflops, 4),
            mfu=round(tflops / args.peak_tflops, 5),
            peak_mem_gb=round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if cuda else None,
            segments_per_s=round(batch / median, 2),
        )
        if compiled:
            row["graph_breaks"] = graph_breaks() - breaks_before
    except Exception as error:  # reported per setting, the others still run
        lines = str(error).strip().splitlines()
        row["error"] = f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
        if args.verbose:
            traceback.print_exc()
    finally:
        del model, criterion, step
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        if compiled:
            torch._dynamo.reset()
    return row


def table(rows: Sequence[Dict[str, object]]) -> str:
    """The rows as a fixed-width text table."""
    head = ("batch", "dtype", "fused", "compile", "step ms", "GFLOP/step", "TFLOP/s", "MFU %",
            "peak GB", "seg/s")
    lines = ["  ".join(f"{h:>10}" for h in head)]
    for row in rows:
        cells: List[str] = [
            str(row["batch"]), str(row["dtype"]), "on" if row["fused_adam"] else "off",
            "on" if row["compile"] else "off",
        ]
        if "error" in row:
            lines.append("  ".join(f"{c:>10}" for c in cells) + f"  error: {row['error']}")
            continue
        memory = row["peak_mem_gb"]
        cells += [
            f"{row['step_ms']:.2f}", f"{row['flops_per_step'] / 1e9:.1f}",
            f"{row['tflops_per_s']:.2f}", f"{100 * row['mfu']:.2f}",
            "-" if memory is None else f"{memory:.2f}", f"{row['segments_per_s']:.1f}",
        ]
        lines.append("  ".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line; ``--peak-tflops`` filled from the GPU's name when left out."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="meg2vec_base", help="shipped config name")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512],
                        help="segments per batch (one setting each)")
    parser.add_argument("--samples", type=int, default=1250, help="time samples per segment")
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, default=None,
                        help="precision: float32, bf16 (weights) or amp (bf16 autocast); "
                             "default bf16 on CUDA (the issue's measurement), float32 on CPU")
    parser.add_argument("--fused-adam", choices=sorted(SWITCH), default="on",
                        help="torch.optim.Adam(fused=True); CUDA only (off on CPU)")
    parser.add_argument("--compile", choices=sorted(SWITCH), default="off",
                        help="model.compile() (torch.compile of the model's forward)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps per setting (at least 1; the first, which compiles, is "
                             "reported as first_step_ms)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak TFLOP/s for MFU (default: H100/H200 989, A100 312; "
                             "required on other devices)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--verbose", action="store_true", help="print a failed setting's traceback")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA GPU: drop --device or use --device cpu")
    if args.dtype is None:
        args.dtype = ["bf16"] if args.device.type == "cuda" else ["float32"]
    if min(args.batches) < 1 or args.samples < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batches, --samples and --steps must be >= 1, --warmup >= 0")
    args.device_name = (
        torch.cuda.get_device_name(args.device) if args.device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})"
    )
    if args.peak_tflops is None:
        args.peak_tflops = default_peak_tflops(args.device_name) if args.device.type == "cuda" \
            else None
        if args.peak_tflops is None:
            parser.error(f"no known peak for {args.device_name!r}: give --peak-tflops "
                         "(the device's dense peak in TFLOP/s for the precision measured)")
    if args.peak_tflops <= 0:
        parser.error("--peak-tflops must be > 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure every setting, print the table, write the JSON; 1 when every setting failed."""
    args = parse_args(argv)
    logging.getLogger().setLevel(logging.WARNING)  # fairseq's import set the root to DEBUG
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.type == "cuda"
    fused_values = SWITCH[args.fused_adam] if cuda else (False,)
    if args.fused_adam != "off" and not cuda:
        print("note: fused Adam is measured on CUDA only; off here", file=sys.stderr)
    flops_cache: Dict[Tuple[str, int], int] = {}
    rows: List[Dict[str, object]] = []
    result = {
        "config": args.config,
        "device": args.device_name,
        "torch": torch.__version__,
        "peak_tflops": args.peak_tflops,
        "samples": args.samples,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benchmarks/gpu_step.py", *(argv or sys.argv[1:])]),
        "settings": rows,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    for batch, dtype, fused, compiled in itertools.product(
        args.batches, args.dtype, fused_values, SWITCH[args.compile]
    ):
        row = measure(args, args.device, batch, dtype, fused, compiled, flops_cache)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json is not None:  # after each setting: a run cut short keeps what it measured
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.config} on {args.device_name}, {args.samples} samples per segment, "
          f"MFU against {args.peak_tflops:g} TFLOP/s, median of {args.steps} steps")
    print(table(rows))
    return 1 if all("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
