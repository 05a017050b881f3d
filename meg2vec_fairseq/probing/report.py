"""Reporting of probe results: the text table, the JSON file and the bar chart."""

from __future__ import annotations

import json
import os
from typing import Dict, List

import numpy as np


def format_table(result: Dict[str, object]) -> str:
    """The result as a text table.

    Parameters
    ----------
    result : dict
        A result of :func:`~meg2vec_fairseq.probing.run.run_probe`.

    Returns
    -------
    str
        A row per source (test macro-F1 and balanced accuracy, mean ± std over seeds) and the
        chance row.
    """
    seeds = len(result["probe"]["seeds"])
    lines = [
        f"{'source':<28} {'macro-F1':>17} {'balanced acc.':>17}   (test, {seeds} seed(s), "
        "mean ± std)",
    ]
    for row in result["sources"]:
        f1, ba = row["macro_f1"], row["balanced_accuracy"]
        lines.append(
            f"{row['name']:<28} {f1['mean']:>9.3f} ± {f1['std']:.3f} "
            f"{ba['mean']:>9.3f} ± {ba['std']:.3f}"
        )
    chance = result["chance"]
    lines.append(f"{'chance':<28} {chance['macro_f1']:>9.3f}         "
                 f"{chance['balanced_accuracy']:>9.3f}")
    return "\n".join(lines)


def write_json(result: Dict[str, object], path: str) -> None:
    """Write ``result`` to ``path`` as indented JSON, atomically.

    Parameters
    ----------
    result : dict
        JSON-able result.
    path : str
        Output file (parent folders are created).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def plot_formats() -> List[str]:
    """File extensions :func:`plot_result` can write.

    Returns
    -------
    list of str
        matplotlib's savefig formats, sorted.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def plot_result(result: Dict[str, object], path: str) -> None:
    """Bar chart of test macro-F1 and balanced accuracy per source.

    Parameters
    ----------
    result : dict
        A result of :func:`~meg2vec_fairseq.probing.run.run_probe` (or anything with its
        ``dataset.name``, ``chance`` and ``sources`` entries).
    path : str
        Image file; its extension picks the format (:func:`plot_formats`).

    Notes
    -----
    Bars are means, error bars standard deviations, dots the seeds and the dashed line chance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["sources"]
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(rows), 3.6), squeeze=False)
    for ax, metric, title in zip(axes[0], ("macro_f1", "balanced_accuracy"),
                                 ("macro-F1", "balanced accuracy")):
        means = [r[metric]["mean"] for r in rows]
        stds = [r[metric]["std"] for r in rows]
        x = np.arange(len(rows))
        ax.bar(x, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.7)
        for i, r in enumerate(rows):
            ax.plot([i] * len(r["per_seed"]), [s[metric] for s in r["per_seed"]], "k.", ms=4)
        ax.axhline(result["chance"][metric], color="tab:red", ls="--", label="chance")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"test {title}")
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(result["dataset"]["name"], fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
