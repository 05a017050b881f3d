"""Read the summary lines fairseq's trainer and validator print (``log_format=simple``)."""

from typing import Dict, List


def parse_fairseq_log(text: str, prefix: str) -> List[Dict[str, float]]:
    """Numeric ``key value`` pairs of fairseq's ``|``-separated lines tagged ``[prefix]``.

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
        One dict per matching line, in order.
    """
    records = []
    for line in text.splitlines():
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
