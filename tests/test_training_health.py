"""tools/check_pretraining.py and meg2vec_fairseq.training_health: a run stuck near chance, an
encoder memorising its recordings, a collapsed codebook, read from fairseq's log lines."""

import json

import pytest
from meg_fixtures import ToolRun

from meg2vec_fairseq.errors import InputError
from meg2vec_fairseq.training_health import check_pretraining_log, logged_num_negatives

CONFIG_LINE = ("[2026-11-27 01:44:23,333][fairseq_cli.train][INFO] - {'model': {'_name': "
               "'meg2vec', 'num_negatives': 100, 'mask_prob': 0.65}}")


def json_line(prefix: str, **stats) -> str:
    """One ``common.log_format=json`` line as fairseq's trainer prints it."""
    keys = {k if prefix == "train_inner" else f"{prefix}_{k}": str(v) for k, v in stats.items()}
    return f"[2026-11-27 01:50:00,000][{prefix}][INFO] - {json.dumps(keys)}"


def log_text(train, valid=(), config=CONFIG_LINE) -> str:
    """A log with ``train`` (update, accuracy) and ``valid`` (update, accuracy, code ppl)."""
    lines = [config] if config else []
    lines += [json_line("train_inner", loss=3.0, accuracy=acc, num_updates=u) for u, acc in train]
    lines += [json_line("valid", loss=3.5, accuracy=acc, code_perplexity=ppl, num_updates=u)
              for u, acc, ppl in valid]
    return "\n".join(lines) + "\n"


#: Healthy shape: rising accuracy, validation close to training, many codes in use.
HEALTHY = log_text([(100, 0.1), (500, 0.45), (1000, 0.6)], [(1000, 0.58, 280.0)])


def test_negatives_are_read_from_the_printed_configuration():
    assert logged_num_negatives(CONFIG_LINE) == 100
    assert logged_num_negatives("no configuration here") is None


def test_a_healthy_run_has_no_problem():
    report = check_pretraining_log(HEALTHY)
    assert report.healthy, report.problems
    assert (report.updates, report.train_accuracy, report.chance) == (1000, 0.6, 1 / 101)
    assert (report.valid_accuracy, report.train_accuracy_at_valid) == (0.58, 0.6)
    assert report.code_perplexity == 280.0


def test_a_run_stuck_near_chance_is_found():
    # round 23c: 0.025 with 100 negatives after 1390 updates
    report = check_pretraining_log(log_text([(100, 0.033), (1390, 0.025)], [(1390, 0.027, 400)]))
    assert not report.healthy
    assert len(report.problems) == 1 and report.problems[0].startswith("stuck near chance")
    assert "0.025" in report.problems[0] and "1390" in report.problems[0]


def test_a_run_flat_above_chance_is_found():
    # round 29e: near negatives, 100 negatives, 0.095 at update 10 and 0.102 at 1500 (10 x
    # chance, so the chance rule alone called it healthy); probes below random weights
    flat = [(10, 0.095), (100, 0.11), (500, 0.10), (1000, 0.10), (1500, 0.102)]
    report = check_pretraining_log(log_text(flat, [(1500, 0.096, 412.0)]))
    assert not report.healthy
    assert len(report.problems) == 1
    assert report.problems[0].startswith("stuck at its starting accuracy")
    assert "0.102" in report.problems[0] and "0.095 at update 10" in report.problems[0]


def test_a_plateau_then_a_rise_is_healthy():
    # round 29f / tiny: ~0.10-0.14 for the first 150-400 updates, then learning
    rising = [(10, 0.14), (100, 0.13), (200, 0.14), (300, 0.24), (500, 0.31), (600, 0.44)]
    report = check_pretraining_log(log_text(rising, [(600, 0.38, 600.0)]))
    assert report.healthy, report.problems
    # the same shape cut at update 200 is too early to judge, not stuck
    early = check_pretraining_log(log_text(rising[:3]))
    assert early.healthy and any("too early" in note for note in early.notes)


def test_stuck_is_not_judged_before_min_updates():
    report = check_pretraining_log(log_text([(100, 0.02), (300, 0.02)]), min_updates=500)
    assert report.healthy
    assert any("too early" in note for note in report.notes)


def test_stuck_needs_the_number_of_negatives():
    text = log_text([(100, 0.02), (1000, 0.02)], config=None)
    report = check_pretraining_log(text)
    assert report.chance is None
    assert any("negatives unknown" in note for note in report.notes)
    # the rise rule needs no negatives: a flat accuracy is stuck either way
    assert len(report.problems) == 1
    assert report.problems[0].startswith("stuck at its starting accuracy")
    given = check_pretraining_log(text, num_negatives=20)
    assert given.chance == 1 / 21 and len(given.problems) == 1
    assert given.problems[0].startswith("stuck near chance")


def test_memorising_compares_training_at_the_last_validation():
    # round 23a: training 0.83 vs validation 0.45 at update ~2900
    text = log_text([(2000, 0.70), (2880, 0.83), (2890, 0.95)], [(2880, 0.45, 280.0)])
    report = check_pretraining_log(text)
    assert report.train_accuracy_at_valid == 0.83  # the line at the validation, not after it
    assert len(report.problems) == 1 and report.problems[0].startswith("memorising")
    assert "0.38" in report.problems[0]
    assert check_pretraining_log(text, max_accuracy_gap=0.5).healthy


def test_codebook_collapse_is_found():
    report = check_pretraining_log(log_text([(1000, 0.6)], [(1000, 0.6, 12.0)]))
    assert len(report.problems) == 1 and report.problems[0].startswith("codebook collapse")


def test_without_validation_only_chance_is_checked():
    report = check_pretraining_log(log_text([(1000, 0.6)]))
    assert report.healthy and report.valid_accuracy is None
    assert any("no validation line" in note for note in report.notes)


def test_simple_log_format_is_read():
    text = "\n".join([
        CONFIG_LINE,
        "[2026-11-27 01:50:00,000][train_inner][INFO] - epoch 045:     10 / 22 loss=6.6, "
        "accuracy=0.025, num_updates=1000, lr=0.0005",
        "[2026-11-27 01:50:01,000][valid][INFO] - epoch 045 | valid on 'valid' subset | loss "
        "6.7 | accuracy 0.02 | code_perplexity 400 | num_updates 1000",
    ])
    report = check_pretraining_log(text)
    assert (report.updates, report.train_accuracy, report.valid_accuracy) == (1000, 0.025, 0.02)
    assert report.problems and report.problems[0].startswith("stuck near chance")


@pytest.mark.parametrize("text", ["", "hello\n", log_text([], [(10, 0.5, 100.0)])])
def test_a_log_without_training_statistics_is_an_error_naming_it(text):
    with pytest.raises(InputError, match="^run.log: no training statistics"):
        check_pretraining_log(text, source="run.log")


@pytest.mark.parametrize("option, value, match", [
    ("max_accuracy_gap", 0.0, "max_accuracy_gap=0.0"), ("min_updates", -1, "min_updates=-1"),
    ("num_negatives", 0, "num_negatives=0")])
def test_impossible_options_are_refused(option, value, match):
    with pytest.raises(InputError, match=match):
        check_pretraining_log(HEALTHY, **{option: value})


def test_tool_exit_status_and_output(tmp_path, capsys):
    tool = ToolRun("check_pretraining")
    healthy, stuck = tmp_path / "healthy.log", tmp_path / "stuck.log"
    healthy.write_text(HEALTHY)
    stuck.write_text(log_text([(100, 0.033), (1390, 0.025)]))
    assert tool.main([healthy]) == 0
    out = capsys.readouterr().out
    assert "1000 updates" in out and "healthy by these rules" in out
    assert tool.main([stuck]) == 3
    assert "PROBLEM: stuck near chance" in capsys.readouterr().out
    assert tool.main([tmp_path / "missing.log"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.log'}: does not exist"
    (tmp_path / "empty.log").write_text("nothing\n")
    assert tool.main([tmp_path / "empty.log"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'empty.log'}: no training")
    with pytest.raises(SystemExit) as usage:
        tool.main([healthy, "--max-gap", "2"])
    assert usage.value.code == 2
    assert "--max-gap" in capsys.readouterr().err


def test_demo_summary_reads_the_negatives_from_the_training_log(tmp_path, capsys):
    # chance is 1 / (num_negatives + 1): 100 negatives in CONFIG_LINE, not the tiny config's 20
    tool = ToolRun("demo_summary")
    train, valid = tmp_path / "train.log", tmp_path / "validate.log"
    train.write_text(HEALTHY)
    valid.write_text(log_text([], [(1000, 0.58, 280.0)], config=None))
    assert tool.main([train, valid]) == 0
    assert "(chance 0.010)" in capsys.readouterr().out
    assert tool.main([train, valid, "--negatives", "20"]) == 0
    assert "(chance 0.048)" in capsys.readouterr().out
    train.write_text(log_text([(100, 0.1)], config=None))
    assert tool.main([train, valid]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {train}: no num_negatives in the printed configuration; pass --negatives")
