"""benchmarks/pool_ablations.py: one variant's runs pooled over several ablation outputs."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import pool_ablations  # noqa: E402


def ablation_output(f1_by_seed, data="/x/synthetic-abc"):
    """An ablation.json with variant 'shipped', task 'event', 2 probe seeds per run."""
    runs = [{"seed": probe, "pretrain_seed": seed, "macro_f1": f1 + 0.01 * probe,
             "balanced_accuracy": f1} for seed, f1 in f1_by_seed.items() for probe in (0, 1)]
    return {"data": data, "variants": {"shipped": {"tasks": {
        "event": {"probe checkpoint": {"runs": runs}}}}}}


def test_pool_spans_every_run_of_every_source(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(ablation_output({1: 0.80, 2: 0.70})))
    second.write_text(json.dumps(ablation_output({1: 0.60})))
    sources = pool_ablations.load_sources([f"cpu={first}", f"gpu={second}"])
    pooled = pool_ablations.pool(sources, "shipped", "probe checkpoint")["event"]
    values = [0.80, 0.81, 0.70, 0.71, 0.60, 0.61]
    assert pooled["macro_f1"]["n"] == 6
    assert pooled["macro_f1"]["mean"] == pytest.approx(np.mean(values))
    assert pooled["macro_f1"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert pooled["runs"] == pytest.approx({"cpu-s1": 0.805, "cpu-s2": 0.705, "gpu-s1": 0.605})
    assert pool_ablations.main(["--variant", "shipped", f"cpu={first}", f"gpu={second}"]) == 0
    assert "cpu-s2 0.705" in capsys.readouterr().out


def test_pool_refuses_other_data_and_missing_variants(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(ablation_output({1: 0.8})))
    second.write_text(json.dumps(ablation_output({1: 0.8}, data="/x/synthetic-def")))
    with pytest.raises(ValueError, match="different data"):
        pool_ablations.pool(pool_ablations.load_sources([str(first), str(second)]),
                            "shipped", "probe checkpoint")
    with pytest.raises(ValueError, match="source1: no variant 'other'"):
        pool_ablations.pool(pool_ablations.load_sources([str(first)]), "other",
                            "probe checkpoint")


def test_pool_takes_the_variants_name_in_each_source(tmp_path, capsys):
    """A recipe renamed between outputs: one ``--variant`` name per source."""
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(ablation_output({1: 0.80})))
    renamed = ablation_output({3: 0.60})
    renamed["variants"]["shipped+path"] = renamed["variants"].pop("shipped")
    second.write_text(json.dumps(renamed))
    sources = pool_ablations.load_sources([f"cpu={first}", f"gpu={second}"])
    pooled = pool_ablations.pool(sources, ["shipped", "shipped+path"], "probe checkpoint")
    assert pooled["event"]["runs"] == pytest.approx({"cpu-s1": 0.805, "gpu-s3": 0.605})
    with pytest.raises(ValueError, match="3 variant names for 2 sources"):
        pool_ablations.pool(sources, ["shipped", "shipped+path", "x"], "probe checkpoint")
    with pytest.raises(ValueError, match="gpu: no variant 'shipped'"):
        pool_ablations.pool(sources, "shipped", "probe checkpoint")
    assert pool_ablations.main(["--variant", "shipped,shipped+path", f"cpu={first}",
                                f"gpu={second}"]) == 0
    assert "gpu-s3 0.605" in capsys.readouterr().out


def test_help_prints_the_options(capsys):
    with pytest.raises(SystemExit) as stop:
        pool_ablations.main(["--help"])
    assert stop.value.code == 0
    assert "fine-tune 10% checkpoint" in " ".join(capsys.readouterr().out.split())
