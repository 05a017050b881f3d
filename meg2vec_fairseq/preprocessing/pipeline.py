"""Running recordings: the one per-recording resume template and the process pool.

Every input type (MNE raw/BIDS, LibriBrain) processes a recording through
:func:`process_resumable`, and all recordings of a run through :func:`run_recordings`.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional, TypeVar

from ..errors import InputError
from .ownership import (
    close_inherited_locks,
    load_done_marker,
    prepare_recording_dir,
    remove_recording_dir,
    write_done_marker,
)
from .results import RecordingResult, RecordingTask

_S = TypeVar("_S")


def process_resumable(segments_root: str | os.PathLike, recording_id: str, fingerprint: str,
                      write: Callable[[_S, Path], RecordingResult],
                      check: Optional[Callable[[], _S]] = None,
                      overwrite: bool = False) -> RecordingResult:
    """Process one recording unless an earlier run finished it (the resume template).

    Parameters
    ----------
    segments_root : path-like
        Root of all segments.
    recording_id : str
        The recording's folder under ``segments_root``.
    fingerprint : str
        :func:`~meg2vec_fairseq.preprocessing.results.params_fingerprint` of the parameters
        that change the output.
    write : callable
        ``write(state, rec_dir) -> RecordingResult``: writes the segments into the (empty)
        ``rec_dir`` and returns the result (status ``"ok"``).
    check : callable, optional
        ``check() -> state``, run before the recording folder is touched: a failure here
        (bad input) leaves an earlier run's folder as it is. ``state`` is passed to
        ``write`` (None without ``check``).
    overwrite : bool
        Ignore an earlier done marker.

    Returns
    -------
    result : RecordingResult
        ``"skipped"`` (the done marker's result) or what ``write`` returned.

    Notes
    -----
    The steps: a valid done marker returns its result; otherwise ``check``, then the folder
    is emptied of the tool's files (:func:`~.ownership.prepare_recording_dir`), ``write``
    runs, and the done marker is written last. A failing ``write`` leaves nothing of the
    tool's behind (:func:`~.ownership.remove_recording_dir`), never anything else.
    """
    if not overwrite:
        done = load_done_marker(segments_root, recording_id, fingerprint)
        if done is not None:
            return done
    t0 = time.perf_counter()
    state = check() if check is not None else None
    rec_dir = prepare_recording_dir(segments_root, recording_id)
    try:
        result = write(state, rec_dir)
    except BaseException:
        remove_recording_dir(segments_root, recording_id)
        raise
    result.elapsed_s = round(time.perf_counter() - t0, 3)
    write_done_marker(segments_root, result, fingerprint)
    return result


def _safe_call(fn: Callable[[RecordingTask], RecordingResult], task: RecordingTask
               ) -> RecordingResult:
    t0 = time.perf_counter()
    try:
        result = fn(task)
    except InputError as err:
        detail = str(err)
        result = RecordingResult.failed(task.recording_id, task.source, detail)
    except Exception as err:  # one bad recording never stops the others
        detail = f"{type(err).__name__}: {err}"
        result = RecordingResult.failed(task.recording_id, task.source, detail)
    if result.status == "ok" and not result.elapsed_s:
        result.elapsed_s = round(time.perf_counter() - t0, 3)
    return result


def _pool_context():
    # fork keeps already-imported modules (no re-import of heavy packages per worker).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _worker_init(parent_pid: int) -> None:
    """Set up a ``--jobs`` worker process.

    Ctrl-C reaches the whole process group: workers ignore it and the parent stops them,
    so that only the parent reports it. Inherited lock descriptors are closed (the parent
    keeps its locks), and a worker whose parent died exits instead of writing on.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited_locks()

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _stop_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Stop the workers now (on Ctrl-C or an error in the parent), without waiting."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for proc in processes:
        try:
            proc.terminate()
        except (OSError, AttributeError):
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.join(timeout=5)


def run_recordings(fn: Callable[[RecordingTask], RecordingResult],
                   tasks: Sequence[RecordingTask], jobs: int = 1, progress: bool = True,
                   desc: str = "recordings") -> list[RecordingResult]:
    """Run ``fn`` over ``tasks`` with ``jobs`` worker processes; never raises per task.

    Parameters
    ----------
    fn : callable
        ``fn(task) -> RecordingResult``; a module-level function when ``jobs > 1``.
        An exception becomes a ``"failed"`` result whose reason is the exception text.
    tasks : sequence of RecordingTask
        Work items.
    jobs : int
        Worker processes; 1 runs in this process.
    progress : bool
        Show a tqdm progress bar (on stderr).
    desc : str
        Progress bar label.

    Returns
    -------
    results : list of RecordingResult
        In the order of ``tasks``.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="rec", disable=not progress, leave=True)
    results: list[Optional[RecordingResult]] = [None] * len(tasks)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i] = _safe_call(fn, task)
                bar.update(1)
        else:
            pool = cf.ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                                          mp_context=_pool_context(),
                                          initializer=_worker_init,
                                          initargs=(os.getpid(),))
            try:
                futures = {pool.submit(_safe_call, fn, t): i for i, t in enumerate(tasks)}
                for fut in cf.as_completed(futures):
                    i = futures[fut]
                    try:
                        results[i] = fut.result()
                    except Exception as err:  # e.g. a worker killed by the OOM killer
                        results[i] = RecordingResult.failed(
                            tasks[i].recording_id, tasks[i].source,
                            f"worker process died: {type(err).__name__}: {err}")
                    bar.update(1)
            except BaseException:  # Ctrl-C: stop the workers rather than wait for them
                _stop_pool(pool)
                raise
            pool.shutdown(wait=True)
    finally:
        bar.close()
    return [r for r in results if r is not None]
