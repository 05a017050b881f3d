"""The benchmark scripts run as their docs say (a subprocess, tiny sizes, CPU)."""

import json
import sys

import pytest
from meg_fixtures import run_command


@pytest.mark.slow
def test_gpu_step_smoke_on_cpu(tmp_path):
    """``benchmarks/gpu_step.py`` at a tiny size: positive FLOPs, step time, MFU."""
    out = tmp_path / "gpu_step.json"
    # fmt: off
    result = run_command(
        [
            sys.executable, "benchmarks/gpu_step.py", "--config", "meg2vec_tiny",
            "--batches", "2", "--samples", "500", "--steps", "2", "--warmup", "1",
            "--dtype", "float32", "--peak-tflops", "1", "--device", "cpu", "--threads", "1",
            "--json", str(out),
        ],
        timeout=120,
    )
    # fmt: on
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["config"] == "meg2vec_tiny" and report["peak_tflops"] == 1
    (row,) = report["settings"]
    assert "error" not in row, row
    assert row["batch"] == 2 and row["dtype"] == "float32" and not row["compile"]
    assert row["flops_per_step"] > 0 and row["step_ms"] > 0
    assert row["mfu"] > 0 and row["segments_per_s"] > 0
    assert "MFU %" in result.stdout
