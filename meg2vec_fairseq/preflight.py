"""Checks of a training configuration against the machine, before fairseq starts.

Notes
-----
fairseq meets a GPU-only option on a machine without the GPU deep inside its trainer or
launcher (``common.fp16=true`` on CPU: ``AssertionError: Torch not compiled with CUDA
enabled`` from the optimizer; ``distributed_world_size`` above the GPUs present: an
assertion in ``infer_init_method``), after the data are loaded, as a hydra traceback. Our
configs register :class:`PreflightChecks` as a hydra callback (``hydra.callbacks`` in
``config/pretraining``), which runs once the command line is composed and before fairseq's
``main``: a problem ends the command with one ``error:`` line naming the option and what to
change, exit code 2. The checks mirror fairseq's own conditions and never refuse what
fairseq would run.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List, Mapping, Optional

#: Environment variables of a ``torchrun`` / ``torch.distributed.launch`` process: fairseq
#: then takes the world size from them (several processes may share a GPU, e.g. with gloo).
TORCHRUN_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
#: ``common`` flags that need CUDA: fairseq's fp16 optimizers and its AMP grad scaler.
CUDA_ONLY_FLAGS = ("fp16", "memory_efficient_fp16", "amp")


def _get(config: Any, section: str, key: str, default: Any = None) -> Any:
    node = config.get(section) if hasattr(config, "get") else None
    if node is None or not hasattr(node, "get"):
        return default
    value = node.get(key, default)
    return default if value is None else value


def config_problems(
    config: Any, n_gpus: int, environ: Optional[Mapping[str, str]] = None
) -> List[str]:
    """What in ``config`` this machine cannot run (empty when nothing).

    Parameters
    ----------
    config : omegaconf.DictConfig or dict
        The composed training configuration (sections ``common`` and
        ``distributed_training``).
    n_gpus : int
        CUDA devices visible to this process (0 also when ``common.cpu`` is set).
    environ : mapping or None
        Environment variables (default ``os.environ``): a ``torchrun`` or SLURM launch
        sets the world size itself, and fairseq does not compare it with the local GPUs.

    Returns
    -------
    list of str
        One message per problem, each naming the option and what to change.
    """
    environ = os.environ if environ is None else environ
    problems = []
    if n_gpus == 0:
        for flag in CUDA_ONLY_FLAGS:
            if _get(config, "common", flag, False):
                problems.append(
                    f"common.{flag}=true needs a CUDA GPU and this process sees none: "
                    f"drop common.{flag} (train in float32 on CPU) or run on a GPU machine"
                )
    world_size = int(_get(config, "distributed_training", "distributed_world_size", 1))
    port = int(_get(config, "distributed_training", "distributed_port", -1))
    init_method = _get(config, "distributed_training", "distributed_init_method", None)
    torchrun = all(name in environ for name in TORCHRUN_VARIABLES)
    slurm = port > 0 and any(
        name in environ for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
    )
    # fairseq's single-node launch (its _infer_single_node_init) needs one GPU per rank.
    if world_size > 1 and init_method is None and not torchrun and not slurm:
        if world_size > n_gpus:
            fix = (
                "set distributed_training.distributed_world_size=1 (fairseq's multi-process "
                "training needs CUDA)"
                if n_gpus == 0
                else f"set distributed_training.distributed_world_size={n_gpus} or fewer, or "
                "start one process per rank with torchrun (docs/gpu.md)"
            )
            problems.append(
                f"distributed_training.distributed_world_size={world_size} but this machine "
                f"has {n_gpus} CUDA GPU(s): {fix}"
            )
    return problems


def visible_gpus(config: Any) -> int:
    """CUDA devices fairseq would use for ``config`` (0 with ``common.cpu=true``)."""
    if _get(config, "common", "cpu", False):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


try:  # hydra is fairseq's dependency; the checks above work without it
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra missing: nothing registers the callback
    Callback = object  # type: ignore[assignment,misc]


class PreflightChecks(Callback):  # type: ignore[misc,valid-type]
    """Hydra callback: :func:`config_problems` before the job; exit 2 with one line each."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        """Check ``config`` against this machine; end the command on a problem."""
        problems = config_problems(config, visible_gpus(config))
        if problems:
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2)
        forget_package()


def forget_package() -> None:
    """Remove this package's modules from ``sys.modules``.

    Hydra imported the package to build this callback, before fairseq's
    ``import_user_module``; that function registers a user dir's ``tasks/`` and ``models/``
    only when the package is not imported yet (and refuses a user dir elsewhere than the
    imported package). Forgetting it lets fairseq import it exactly as without the callback.
    """
    package = __name__.split(".")[0]
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
