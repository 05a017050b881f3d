"""The project's exceptions: one tree rooted in :class:`Meg2VecError`.

Library code raises these with a one-line message that names the file (and row, option or
value) and what is wrong; command lines (:mod:`meg2vec_fairseq.cli`, ``tools/``) turn them
into ``error: <message>`` and an exit code. Classes that were ``ValueError`` or
``RuntimeError`` before the tree existed still are, so ``except ValueError`` keeps working.

::

    Meg2VecError
    +-- InputError                 bad input data (the message becomes a failure reason)
    |   +-- RecordingError         a raw / BIDS recording
    |   +-- LibriBrainError        a LibriBrain run or file            (also ValueError)
    |   +-- ForeignDirectoryError  a folder the tools did not create: left untouched
    |   +-- MegDataError           a manifest row or segment for training (also ValueError)
    |   +-- CheckpointError        a checkpoint for feature extraction  (also ValueError)
    |   +-- ProbeError             labels, splits or feature sources    (also ValueError)
    +-- OutputError                an output folder
        +-- OutputPathError        not a folder, not creatable/writable (also ValueError)
        +-- OutputLockedError      another run holds its lock           (also RuntimeError)
"""


class Meg2VecError(Exception):
    """Root of every error this project raises on purpose."""


class InputError(Meg2VecError):
    """Bad input (unreadable file, no MEG channels, too short, ...).

    Raise it (or a subclass) from a recording worker with a message that names the file
    and what is wrong; the per-recording pipeline reports the message as the failure reason
    as is, whereas other exceptions are reported as ``"<ExceptionType>: <message>"``.
    """


class RecordingError(InputError):
    """A raw or BIDS recording that cannot be used; the message names the file."""


class LibriBrainError(InputError, ValueError):
    """Bad LibriBrain input: names the run key and/or file and what is wrong."""


class ForeignDirectoryError(InputError):
    """A recording folder the tools cannot prove they wrote: it is left untouched."""


class MegDataError(InputError, ValueError):
    """A manifest or segment that cannot be used for training."""


class CheckpointError(InputError, ValueError):
    """A checkpoint that cannot be used as a ``meg2vec`` feature extractor."""


class ProbeError(InputError, ValueError):
    """Bad probe input (labels, splits, sources); the message names what is wrong."""


class OutputError(Meg2VecError):
    """An output folder that cannot be used."""


class OutputPathError(OutputError, ValueError):
    """An output folder is a file, or cannot be created or written."""


class OutputLockedError(OutputError, RuntimeError):
    """Another run holds the lock on an output folder."""
