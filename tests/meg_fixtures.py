"""Small builders of MEG segment manifests for the plugin-core tests."""

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from meg2vec_fairseq.fairseq_logs import parse_fairseq_log  # noqa: F401  (re-exported)
from meg2vec_fairseq.io.manifest import write_manifest as write_manifest_file

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def write_manifest(
    dest: Path,
    arrays: Sequence[np.ndarray],
    split: str = "train",
    lengths: Optional[Sequence[int]] = None,
) -> Path:
    """Save ``arrays`` as ``.npy`` segments and list them in ``dest/{split}.tsv``."""
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, array in enumerate(arrays):
        name = f"{split}-{i:03d}.npy"
        np.save(dest / name, array)
        length = array.shape[-1] if lengths is None else lengths[i]
        rows.append((name, length))
    manifest = dest / f"{split}.tsv"
    write_manifest_file(manifest, dest, rows, fsync=False)
    return manifest


def random_segments(n: int, channels: int = 306, samples: int = 1250, seed: int = 0) -> List:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((channels, samples)).astype(np.float32) for _ in range(n)]


def run_command(
    args: Sequence[str], timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    """Run a command from the repository root with the venv first on PATH, as a user would."""
    environment = dict(os.environ)
    environment["PATH"] = f"{VENV_BIN}{os.pathsep}{environment.get('PATH', '')}"
    environment.update(env)
    return subprocess.run(
        list(args), cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )


class ToolRun:
    """``tools/<name>.py`` run as a user runs it (a subprocess), with its ``main``'s face.

    ``main(argv)`` returns the exit status and replays the tool's stdout/stderr (so
    ``capsys`` sees them); an argparse usage error or ``--help`` raises ``SystemExit`` with
    the exit status, as the tool's own ``main`` does.
    """

    def __init__(self, name: str):
        self.path = REPO_ROOT / "tools" / f"{name}.py"

    def main(self, argv: Sequence) -> int:
        argv = [str(a) for a in argv]
        out = subprocess.run([sys.executable, str(self.path), *argv], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=600)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        if (out.returncode == 2 and out.stderr.startswith("usage:")) or (
                out.returncode == 0 and ("--help" in argv or "-h" in argv)):
            raise SystemExit(out.returncode)
        return out.returncode
