"""meg2vec-fairseq: wav2vec 2.0 self-supervised pre-training for multi-channel MEG.

Importing the package imports neither fairseq nor torch: the library (preprocessing,
synthetic data, probing) works without them. The fairseq parts live in

* :mod:`meg2vec_fairseq.tasks` (task ``meg_pretraining``) and
* :mod:`meg2vec_fairseq.models` (model ``meg2vec``),

which fairseq's ``import_user_module`` imports itself for ``common.user_dir=meg2vec_fairseq``
(hydra) or ``--user-dir meg2vec_fairseq`` (argparse command lines); code that loads a
checkpoint in its own process imports them explicitly (:func:`register_with_fairseq`).
"""

__version__ = "0.1.0"


def register_with_fairseq() -> None:
    """Register the task and the model with fairseq (imports fairseq and torch).

    Needed before loading a ``meg2vec`` checkpoint in a process that imported the package
    without going through fairseq's ``--user-dir`` (fairseq then skips the user dir's
    ``tasks/`` and ``models/`` because the package is already imported).
    """
    from . import models, tasks  # noqa: F401  (importing registers them)
