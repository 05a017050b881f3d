"""benchmarks/ablation.py: which pre-training jobs run (no training here: jobs are recorded)."""

from __future__ import annotations

import json
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import ablation  # noqa: E402


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """Record every batch of jobs instead of running it; fake the generated data."""
    batches = []

    def fake_run_jobs(jobs, parallel, threads):
        batches.append([job["name"] for job in jobs])
        for job in jobs:
            job["rc"], job["wall_s"] = 0, 0.0

    monkeypatch.setattr(ablation, "run_jobs", fake_run_jobs)
    monkeypatch.setattr(ablation.ps, "prepare_data", lambda args: {
        "dir": str(tmp_path / "data"), "pretrain": str(tmp_path / "data" / "pretrain")})
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"shipped": [], "other": ["model.mask_length=2"]}))
    return batches, str(variants), tmp_path


def touch_checkpoint(out, run: str, seed: int, finished: bool = True):
    """An (empty) checkpoint where ablation.py puts the run's last one, and its pretrain.log,
    with fairseq's last line if ``finished``; returns the checkpoint's path."""
    checkpoints = out / "runs" / f"{run}-s{seed}" / f"seed-{seed}" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "checkpoint_last.pt").write_bytes(b"")
    (checkpoints.parent / "pretrain.log").write_text(
        "[fairseq_cli.train][INFO] - done training in 906.0 seconds\n" if finished
        else '[train_inner][INFO] - {"epoch": 3, "num_updates": "410"}\n')
    return checkpoints / "checkpoint_last.pt"


def test_pretrain_only_runs_every_pretraining_and_no_evaluation(recorded):
    batches, variants, tmp_path = recorded
    out = tmp_path / "abl"
    rc = ablation.main(["--out", str(out), "--variants", variants, "--pretrain-seeds", "1", "2",
                        "--pretrain-only"])
    assert rc == 0
    assert batches == [["pretrain shipped seed 1", "pretrain shipped seed 2",
                        "pretrain other seed 1", "pretrain other seed 2"]]
    assert not (out / "ablation.json").exists()


def test_reuse_checkpoints_skips_the_runs_that_have_one(recorded):
    batches, variants, tmp_path = recorded
    out = tmp_path / "abl"
    touch_checkpoint(out, "other", 2)
    rc = ablation.main(["--out", str(out), "--variants", variants, "--pretrain-seeds", "1", "2",
                        "--reuse-checkpoints", "--pretrain-only"])
    assert rc == 0
    assert batches == [["pretrain shipped seed 1", "pretrain shipped seed 2",
                        "pretrain other seed 1"]]


def test_reuse_checkpoints_trains_an_unfinished_run_again_from_scratch(recorded):
    """A checkpoint whose log lacks fairseq's 'done training' line is a run that was stopped
    part-way: it is removed and the run trained again (fairseq would otherwise resume it)."""
    batches, variants, tmp_path = recorded
    out = tmp_path / "abl"
    partial = touch_checkpoint(out, "other", 2, finished=False)
    touch_checkpoint(out, "shipped", 1)
    rc = ablation.main(["--out", str(out), "--variants", variants, "--pretrain-seeds", "1", "2",
                        "--reuse-checkpoints", "--pretrain-only"])
    assert rc == 0
    assert batches == [["pretrain shipped seed 2", "pretrain other seed 1",
                        "pretrain other seed 2"]]
    assert not partial.exists()


def test_without_reuse_every_run_trains_again_from_scratch(recorded):
    batches, variants, tmp_path = recorded
    out = tmp_path / "abl"
    earlier = touch_checkpoint(out, "shipped", 1)
    ablation.main(["--out", str(out), "--variants", variants, "--pretrain-seeds", "1",
                   "--pretrain-only"])
    assert batches == [["pretrain shipped seed 1", "pretrain other seed 1"]]
    assert not earlier.exists()  # fairseq would have resumed from it and trained nothing


@pytest.fixture
def aborting_at_exit(monkeypatch, tmp_path):
    """Pre-training jobs that exit with rc -6; ``finished`` ones first log fairseq's last line
    and leave their checkpoint, as the H200's meg2vec_small runs did (round 25c)."""
    batches = []

    def fake_run_jobs(jobs, parallel, threads):
        batches.append([job["name"] for job in jobs])
        for job in jobs:
            job["rc"], job["wall_s"] = 0, 0.0
            if job["name"].startswith("pretrain"):
                job["rc"] = -6
                os.makedirs(os.path.dirname(job["log"]), exist_ok=True)
                with open(job["log"], "w") as log:
                    if "seed 1" in job["name"]:
                        log.write("[fairseq_cli.train][INFO] - done training in 254.4 seconds\n")
                        checkpoints = os.path.join(os.path.dirname(job["log"]), "checkpoints")
                        os.makedirs(checkpoints, exist_ok=True)
                        open(os.path.join(checkpoints, "checkpoint_last.pt"), "wb").close()
                    log.write("terminate called without an active exception\n")

    monkeypatch.setattr(ablation, "run_jobs", fake_run_jobs)
    monkeypatch.setattr(ablation.ps, "prepare_data", lambda args: {
        "dir": str(tmp_path / "data"), "pretrain": str(tmp_path / "data" / "pretrain")})
    monkeypatch.setattr(ablation, "combine", lambda *args: {})
    monkeypatch.setattr(ablation, "markdown", lambda combined, args: "")
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"shipped": []}))
    return batches, str(variants), tmp_path


def test_a_run_that_aborts_after_its_last_checkpoint_is_evaluated(aborting_at_exit):
    batches, variants, tmp_path = aborting_at_exit
    rc = ablation.main(["--out", str(tmp_path / "abl"), "--variants", variants,
                        "--pretrain-seeds", "1", "2"])
    # seed 1 finished training and is evaluated; seed 2 never did, so the run fails
    assert batches[1] == ["evaluate shipped seed 1", "evaluate random-init and raw"]
    assert rc == 1
    for seed, expected in (("1", 0), ("2", 1)):
        assert ablation.main(["--out", str(tmp_path / f"only{seed}"), "--variants", variants,
                              "--pretrain-seeds", seed, "--pretrain-only"]) == expected


def _variant_files():
    return sorted(name for name in os.listdir(os.path.join(REPO_ROOT, "benchmarks"))
                  if name.startswith("variants_") and name.endswith(".json"))


@pytest.mark.parametrize("name", _variant_files())
def test_every_variant_file_names_real_fields(name):
    """The research log's commands rerun: each override names a field of the model or the
    criterion, and one without '+' is listed in the shipped yaml (hydra refuses it otherwise)."""
    import dataclasses

    from fairseq.criterions.wav2vec_criterion import Wav2VecCriterionConfig

    from meg2vec_fairseq import configs
    from meg2vec_fairseq.models.meg2vec import Meg2VecConfig

    fields = {"model": {f.name for f in dataclasses.fields(Meg2VecConfig)},
              "criterion": {f.name for f in dataclasses.fields(Wav2VecCriterionConfig)}}
    composed = configs.load_pretraining_config("meg2vec_tiny")
    with open(os.path.join(REPO_ROOT, "benchmarks", name)) as f:
        variants = json.load(f)
    assert variants and isinstance(variants, dict)
    for variant, overrides in variants.items():
        for override in overrides:
            key, sep, _ = override.partition("=")
            assert sep, f"{name}: {variant}: {override!r} is not key=value"
            group, _, field_name = key.lstrip("+").partition(".")
            if group in fields:
                assert field_name in fields[group], f"{name}: {variant}: no field {key!r}"
            if not key.startswith("+"):
                assert field_name in composed[group], \
                    f"{name}: {variant}: {key!r} is not in the yaml (needs '+')"
