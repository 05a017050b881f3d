"""Read the summary lines fairseq's trainer and validator print (``simple`` or ``json`` format)."""

from __future__ import annotations

import json
from typing import Dict, List, Optional


def parse_fairseq_log(text: str, prefix: str) -> List[Dict[str, float]]:
    """Numeric statistics of fairseq's log lines tagged ``[prefix]``.

    Parameters
    ----------
    text : str
        Log text (stdout and stderr of ``fairseq-hydra-train`` or ``fairseq-validate``).
    prefix : str
        The logger name in brackets: ``"train"`` (end of epoch), ``"train_inner"``
        (every ``log_interval`` updates), ``"valid"``.

    Returns
    -------
    list of dict
        One dict per matching line, in order: statistic name -> value (non-numeric values
        are left out).

    Notes
    -----
    Both of fairseq's line formats are read: ``common.log_format=simple`` (``|``-separated
    ``key value`` pairs, or ``key=value`` pairs on ``train_inner`` lines) and
    ``common.log_format=json`` (a JSON object after the tag; keys lose their ``prefix_``, so
    ``valid_loss`` reads ``loss`` as in the simple format). A JSON line that does not decode is
    skipped.
    """
    records = []
    tag = f"[{prefix}][INFO] - "
    for line in text.splitlines():
        if tag in line and line.split(tag, 1)[1].lstrip().startswith("{"):
            record = _json_record(line.split(tag, 1)[1], prefix)
            if record is not None:
                records.append(record)
            continue
        if f"[{prefix}][INFO]" not in line and f"| {prefix} |" not in line:
            continue
        if " | " in line:
            parts = line.split(" | ")[1:]
        else:  # train_inner lines: "epoch 001:  10 / 10 loss=4.7, ntokens=132, ..."
            parts = [p.replace("=", " ") for p in line.split(" - ", 1)[-1].split(", ")]
        record = {}
        for part in parts:
            fields = part.split()
            if len(fields) >= 2:
                try:
                    record[fields[-2]] = float(fields[-1])
                except ValueError:
                    pass
        records.append(record)
    return records


def _json_record(text: str, prefix: str) -> Optional[Dict[str, float]]:
    """The numeric entries of one ``log_format=json`` object, ``prefix_`` dropped from keys."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return None
    record = {}
    for key, value in raw.items():
        key = key[len(prefix) + 1 :] if key.startswith(prefix + "_") else key
        try:
            record[key] = float(value)
        except (TypeError, ValueError):
            pass
    return record
