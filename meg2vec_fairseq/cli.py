"""Shared pieces of the command-line tools: option types, path checks, one-line errors.

Every tool reports a problem as exactly one line starting ``error:`` on stderr and exits
2 for a usage error (an impossible option value, an output path that cannot be written)
or 1 for bad data; Ctrl-C prints one line ``interrupted`` and exits 130. This module has
no heavy imports (no torch, no fairseq) so any tool can use it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
import sys
from typing import Callable, Dict, List, Mapping, NoReturn, Optional, Sequence

#: Exit status of a tool stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class ToolParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are the usage line plus one ``error: ...`` line.

    argparse's own format is ``prog: error: ...``; every tool here prints ``error: ...`` so
    scripts (and the tests) find the culprit the same way whatever failed.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


# --------------------------------------------------------------------------- option types


def option_flags(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """Library parameter name -> how the command line spells it (``--flag`` or METAVAR)."""
    flags: Dict[str, str] = {}
    for action in parser._actions:
        if action.option_strings:
            long = [o for o in action.option_strings if o.startswith("--")]
            flags.setdefault(action.dest, (long or action.option_strings)[0])
        elif action.dest not in ("help", argparse.SUPPRESS):
            flags.setdefault(action.dest, action.metavar or action.dest.upper())
    return flags


def flag_message(message: str, flags: Mapping[str, str]) -> str:
    """A library message in command-line words: ``name=value`` -> ``--flag value``.

    ``name=True`` becomes the bare flag; names that are no option stay as they are.
    """

    def word(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        return flags[name] if value == "True" else f"{flags[name]} {value}"

    return re.sub(r"\b([a-z][a-z0-9_]*)=(True\b|)", word, message)



def _number(text: str, kind: Callable[[str], float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def finite_float(text: str) -> float:
    """argparse type: any finite float (``nan`` and ``inf`` are refused)."""
    return _number(text, float)


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a fraction in (0, 1]."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def nonempty(text: str) -> str:
    """argparse type: a string that is not empty or blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# --------------------------------------------------------------------------- path checks


def _kind(mode: int) -> Optional[str]:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return None


def input_file_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be read as a regular file (``"does not exist"``, ...), or None.

    A FIFO is refused before it is opened: reading one would block forever.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a parent path is not a directory)"
    except PermissionError:
        return "cannot be accessed (permission denied)"
    except OSError as err:
        return f"cannot be accessed ({err.strerror or err})"
    kind = _kind(mode)
    if kind is not None:
        return f"is {kind}, not a regular file"
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return None


def _creatable(path: str) -> Optional[str]:
    """Why ``path`` (which does not exist) could not be created as a file or directory."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return None


def output_dir_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be used (created if missing) as an output directory, or None."""
    if os.path.lexists(path):
        if not os.path.isdir(path):
            return "exists and is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return "is not writable"
        return None
    return _creatable(path)


def output_file_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be written (replaced if it exists, parents created), or None."""
    if os.path.lexists(path):
        try:
            kind = _kind(os.stat(path).st_mode)
        except OSError as err:
            return f"cannot be accessed ({err.strerror or err})"
        if kind is not None:
            return f"is {kind}, not a file"
        if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK | os.X_OK):
            return "cannot be replaced: its directory is not writable"
        return None
    return _creatable(path)


def check_outputs(
    parser: argparse.ArgumentParser, dirs: Sequence[tuple] = (), files: Sequence[tuple] = ()
) -> None:
    """``parser.error`` (exit 2) for the first unusable output; before any work is done.

    ``dirs`` and ``files`` are ``(option name, path or None)`` pairs.
    """
    problems: List[str] = []
    for option, path in dirs:
        if path is not None and (problem := output_dir_problem(str(path))):
            problems.append(f"{option} {path}: {problem}")
    for option, path in files:
        if path is not None and (problem := output_file_problem(str(path))):
            problems.append(f"{option} {path}: {problem}")
    if problems:
        parser.error(problems[0])


# --------------------------------------------------------------------------- running


def run_main(main: Callable[[Optional[Sequence[str]]], int], resumable: bool = False) -> NoReturn:
    """``sys.exit(main())``, with Ctrl-C reported as one line and exit status 130.

    Parameters
    ----------
    main : callable
        The tool's ``main(argv=None) -> exit status``.
    resumable : bool
        Whether running the same command again continues the work (said in the message).
    """
    try:
        status = main(None)
    except KeyboardInterrupt:
        message = "interrupted; re-run the same command to resume" if resumable else "interrupted"
        print(message, file=sys.stderr)
        status = EXIT_INTERRUPTED
    sys.exit(status)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors are one line already)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
