"""meg2vec-fairseq: wav2vec 2.0 self-supervised pre-training for multi-channel MEG.

Importing this package registers, with fairseq,

* the task ``meg_pretraining`` (:mod:`meg2vec_fairseq.tasks.meg_pretraining`) and
* the model ``meg2vec`` (:mod:`meg2vec_fairseq.models.meg2vec`),

so that ``common.user_dir=meg2vec_fairseq`` (hydra) or ``--user-dir meg2vec_fairseq``
(argparse command lines) makes them available to fairseq's own trainer and criterion.
"""

from . import models, tasks  # noqa: F401  (imports register the task and the model)

__version__ = "0.1.0"
