"""Read a pre-training log for the three failures the research log met: a run that never left
chance level, an encoder that memorises its recordings, and a collapsed codebook.

Each rule comes from measured runs (docs/pretraining_research.md):

* **stuck near chance** (round 23c): ``meg2vec_small`` at the seed's learning rate kept a
  contrastive accuracy of 0.025-0.028 (2.5-2.8 times chance, 1 / 101 with 100 negatives; a
  negative equal to the positive is dropped, so a dead run sits above the nominal chance) for
  all of 1000-1400 updates, with a falling gradient norm; its features probed at chance. The
  seed's plain wav2vec 2.0 objective on tiny ended 600 updates at 2.6-2.8 times chance with
  features below random weights. Learning runs in the log's ablations were at 3.5 times chance
  or more from update 500 on, the shipped recipe at 10 times by update 500.
  With near negatives (``negatives_max_distance``) a run that never learned sits far above
  that: ``meg2vec_small`` with negatives within 10 frames kept 0.10 (10 times chance) from
  update 10 to 1500 and probed below random weights (round 29e), while learning runs rose
  from their starting level (~0.10-0.14 through a plateau of 150-400 updates) to 2.4-4.4
  times it by update 500-600 (rounds 29c, 29f). So a run is also stuck when its accuracy
  ends below 1.5 times the lowest it logged in the first half of the run.
* **memorising** (rounds 23a-24): on 16 minutes of pre-training data the tiny encoder's
  training accuracy rose to 0.83 while the validation recordings stayed at 0.45, and the
  sustained-state probe fell from 0.706 to 0.621; with 64 minutes the two accuracies stayed
  within 0.07 and the probe rose to 0.775.
* **codebook collapse**: the seed's advice, code perplexity below 50.

No fairseq import: the log is text (:func:`meg2vec_fairseq.fairseq_logs.parse_fairseq_log`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from meg2vec_fairseq.errors import InputError
from meg2vec_fairseq.fairseq_logs import parse_fairseq_log

#: Defaults of :func:`check_pretraining_log` (the command line shows them in its help).
MIN_UPDATES = 500
MAX_ACCURACY_GAP = 0.15
MIN_CODE_PERPLEXITY = 50.0
CHANCE_FACTOR = 3.0
#: Final accuracy below this multiple of the lowest in the run's first half: no learning.
MIN_ACCURACY_RISE = 1.5


@dataclass
class HealthReport:
    """What :func:`check_pretraining_log` read and found.

    Attributes
    ----------
    updates : int
        Updates at the last training statistics line.
    train_accuracy : float
        Contrastive accuracy of that line.
    chance : float or None
        ``1 / (num_negatives + 1)`` where the number of negatives is known.
    valid_updates, valid_accuracy, train_accuracy_at_valid, code_perplexity : float or None
        The last validation line (its update, contrastive accuracy, code perplexity) and the
        training accuracy of the last training line at or before that update.
    problems : list of str
        One sentence per failure found (empty: healthy by these rules).
    notes : list of str
        Checks that could not be made, and why.
    """

    updates: int
    train_accuracy: float
    chance: Optional[float] = None
    valid_updates: Optional[int] = None
    valid_accuracy: Optional[float] = None
    train_accuracy_at_valid: Optional[float] = None
    code_perplexity: Optional[float] = None
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when no rule found a problem."""
        return not self.problems


def logged_num_negatives(text: str) -> Optional[int]:
    """``model.num_negatives`` from the configuration fairseq prints at the start, or None."""
    match = re.search(r"['\"]num_negatives['\"]:\s*(\d+)", text)
    return int(match.group(1)) if match else None


def check_pretraining_log(text: str, source: str = "log", num_negatives: Optional[int] = None,
                          min_updates: int = MIN_UPDATES,
                          max_accuracy_gap: float = MAX_ACCURACY_GAP,
                          min_code_perplexity: float = MIN_CODE_PERPLEXITY) -> HealthReport:
    """Check a ``fairseq-hydra-train`` log (``simple`` or ``json`` format) for failed learning.

    Parameters
    ----------
    text : str
        The log's text.
    source : str
        The log's name, for error messages.
    num_negatives : int or None
        The model's ``num_negatives``; None reads it from the configuration in the log.
    min_updates : int
        Judge "stuck near chance" only from this many updates on (early accuracy is low in
        every run).
    max_accuracy_gap : float
        Training minus validation contrastive accuracy above which the encoder is memorising.
    min_code_perplexity : float
        Validation code perplexity below which the codebook has collapsed.

    Returns
    -------
    HealthReport

    Raises
    ------
    InputError
        When the log holds no training statistics with a contrastive accuracy, or an option
        value is impossible.
    """
    if min_updates < 0:
        raise InputError(f"min_updates={min_updates}: must be >= 0")
    if not 0.0 < max_accuracy_gap <= 1.0:
        raise InputError(f"max_accuracy_gap={max_accuracy_gap}: must be in (0, 1]")
    if num_negatives is not None and num_negatives < 1:
        raise InputError(f"num_negatives={num_negatives}: must be >= 1")
    train = _with_accuracy(parse_fairseq_log(text, "train_inner"))
    if not train:
        raise InputError(f"{source}: no training statistics with a contrastive accuracy "
                         "(is it the output of fairseq-hydra-train with the wav2vec criterion?)")
    valid = _with_accuracy(parse_fairseq_log(text, "valid"))
    last = train[-1]
    report = HealthReport(updates=int(last["num_updates"]), train_accuracy=last["accuracy"])
    if num_negatives is None:
        num_negatives = logged_num_negatives(text)
    if num_negatives is not None:
        report.chance = 1.0 / (num_negatives + 1)
    _check_stuck(report, train, min_updates)
    if valid:
        _check_memorising(report, train, valid[-1], max_accuracy_gap)
        report.code_perplexity = valid[-1].get("code_perplexity")
        if report.code_perplexity is not None and report.code_perplexity < min_code_perplexity:
            report.problems.append(
                f"codebook collapse: validation code perplexity {report.code_perplexity:.1f} "
                f"< {min_code_perplexity:g}")
    else:
        report.notes.append("no validation line with a contrastive accuracy: memorisation "
                            "and the codebook not checked")
    return report


def _with_accuracy(records: List[Dict[str, float]]) -> List[Dict[str, float]]:
    return [r for r in records if "accuracy" in r and "num_updates" in r]


def _check_stuck(report: HealthReport, train: List[Dict[str, float]],
                 min_updates: int) -> None:
    if report.updates < min_updates:
        report.notes.append(f"only {report.updates} updates (< {min_updates}): too early to "
                            "judge 'stuck near chance'")
        return
    advice = ("the features will be no better than random weights: lower the learning rate, "
              "change the seed, or draw negatives further away (model.negatives_max_distance)")
    if report.chance is None:
        report.notes.append("number of negatives unknown (not in the log; give it): "
                            "'stuck near chance' not checked")
    elif report.train_accuracy < CHANCE_FACTOR * report.chance:
        report.problems.append(
            f"stuck near chance: contrastive accuracy {report.train_accuracy:.3f} after "
            f"{report.updates} updates (< {CHANCE_FACTOR:g} x chance {report.chance:.3f}); "
            + advice)
        return
    # the start: the training lines of the run's first half (a late dip is not a start)
    start = [r for r in train[:-1] if r["num_updates"] <= report.updates / 2]
    if not start:
        report.notes.append("no training line in the first half of the run: 'stuck at its "
                            "starting accuracy' not checked")
        return
    lowest = min(start, key=lambda record: record["accuracy"])
    if report.train_accuracy < MIN_ACCURACY_RISE * lowest["accuracy"]:
        report.problems.append(
            f"stuck at its starting accuracy: contrastive accuracy {report.train_accuracy:.3f} "
            f"after {report.updates} updates, below {MIN_ACCURACY_RISE:g} x its lowest in the "
            f"first half ({lowest['accuracy']:.3f} at update {int(lowest['num_updates'])}); "
            + advice)


def _check_memorising(report: HealthReport, train: List[Dict[str, float]],
                      last_valid: Dict[str, float], max_gap: float) -> None:
    report.valid_updates = int(last_valid["num_updates"])
    report.valid_accuracy = last_valid["accuracy"]
    before = [r for r in train if r["num_updates"] <= report.valid_updates] or train[:1]
    report.train_accuracy_at_valid = before[-1]["accuracy"]
    gap = report.train_accuracy_at_valid - report.valid_accuracy
    if gap > max_gap:
        report.problems.append(
            "memorising the pre-training recordings: contrastive accuracy "
            f"{report.train_accuracy_at_valid:.3f} on training vs {report.valid_accuracy:.3f} "
            f"on validation at update {report.valid_updates} (gap {gap:.2f} > {max_gap:g}); "
            "more recordings, or fewer updates, keep what the features carry")
