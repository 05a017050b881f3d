"""GPU-only options on a machine without the GPUs: one ``error:`` line before fairseq starts."""

import pytest
import torch
from meg_fixtures import random_segments, run_command, write_manifest

from meg2vec_fairseq.preflight import config_problems

TORCHRUN = {"MASTER_ADDR": "localhost", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "0"}


def cfg(world_size=1, port=-1, **common):
    return {"common": dict(common),
            "distributed_training": {"distributed_world_size": world_size,
                                     "distributed_port": port,
                                     "distributed_init_method": None}}


@pytest.mark.parametrize("flag", ["fp16", "amp", "memory_efficient_fp16"])
def test_half_precision_flags_need_a_gpu(flag):
    problems = config_problems(cfg(**{flag: True}), n_gpus=0, environ={})
    assert len(problems) == 1 and f"common.{flag}=true needs a CUDA GPU" in problems[0]
    assert f"drop common.{flag}" in problems[0]
    assert config_problems(cfg(**{flag: True}), n_gpus=1, environ={}) == []


def test_bf16_and_float32_pass_on_cpu():
    assert config_problems(cfg(bf16=True), n_gpus=0, environ={}) == []
    assert config_problems(cfg(), n_gpus=0, environ={}) == []


def test_world_size_above_the_gpus_of_a_single_node_launch():
    (problem,) = config_problems(cfg(world_size=4), n_gpus=2, environ={})
    assert "distributed_world_size=4 but this machine has 2 CUDA GPU(s)" in problem
    assert "distributed_world_size=2 or fewer" in problem
    (problem,) = config_problems(cfg(world_size=2), n_gpus=0, environ={})
    assert "set distributed_training.distributed_world_size=1" in problem
    assert config_problems(cfg(world_size=2), n_gpus=2, environ={}) == []


def test_launchers_that_set_the_world_size_themselves_are_not_refused():
    # torchrun: several ranks may share one GPU (gloo); SLURM: the ranks span nodes
    assert config_problems(cfg(world_size=2), n_gpus=1, environ=TORCHRUN) == []
    slurm = {"SLURM_JOB_NODELIST": "node[1-2]"}
    assert config_problems(cfg(world_size=16, port=12345), n_gpus=8, environ=slurm) == []
    # without a port fairseq does not use SLURM's node list: a single-node launch again
    assert config_problems(cfg(world_size=16), n_gpus=8, environ=slurm) != []


def train_one_update(tmp_path, *overrides):
    """The card's training command, 1 update on a 2-segment manifest, with ``overrides``."""
    data = tmp_path / "data"
    write_manifest(data, random_segments(2, samples=600))
    write_manifest(data, random_segments(1, samples=600, seed=1), split="valid")
    return run_command([
        "fairseq-hydra-train", "--config-dir", "config/pretraining", "--config-name",
        "meg2vec_tiny", "common.user_dir=meg2vec_fairseq", f"task.data={data}",
        f"checkpoint.save_dir={tmp_path / 'ck'}", "optimization.max_update=1", *overrides,
    ], timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
@pytest.mark.parametrize("override, option", [
    ("common.fp16=true", "common.fp16=true"),
    ("common.amp=true", "common.amp=true"),
    ("distributed_training.distributed_world_size=2", "distributed_world_size=2"),
])
def test_card_command_ends_with_one_error_line(tmp_path, override, option):
    """The card's command on CPU: exit 2 and one line, before any data is read or written."""
    result = train_one_update(tmp_path, override)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and option in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ck").exists()


def test_card_command_trains_with_the_callback_registered(tmp_path):
    """The callback imports the package before fairseq's user-dir import: fairseq must still
    register the task and the model (it skips a user dir that is already imported)."""
    result = train_one_update(tmp_path, "task.max_sample_size=null", "task.min_sample_size=0",
                              "dataset.num_workers=0")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "ck" / "checkpoint_last.pt").is_file()
