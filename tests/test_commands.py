"""The user's command lines, run literally from the repository root in a subprocess.

    fairseq-hydra-train --config-dir config/pretraining --config-name meg2vec_tiny \
        common.user_dir=meg2vec_fairseq task.data=<manifest dir>
    fairseq-validate <manifest dir> --user-dir meg2vec_fairseq --task meg_pretraining \
        --path <checkpoint> --valid-subset valid --max-tokens N
    python tools/extract_features.py ...
"""

import numpy as np
import pytest
from meg_fixtures import parse_fairseq_log, random_segments, run_command, write_manifest

from meg2vec_fairseq.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow


def train_command(data, save_dir, max_update, *extra):
    return [
        "fairseq-hydra-train",
        "--config-dir",
        "config/pretraining",
        "--config-name",
        "meg2vec_tiny",
        "common.user_dir=meg2vec_fairseq",
        f"task.data={data}",
        f"checkpoint.save_dir={save_dir}",
        f"optimization.max_update={max_update}",
        "common.log_interval=5",
        *extra,
    ]


def extract_command(save_dir, manifest, dest, layer):
    # fmt: off
    return [
        "python", "tools/extract_features.py",
        "--checkpoint", str(save_dir / "checkpoint_best.pt"),
        "--manifest", str(manifest), "--dest", str(dest), "--layer", layer,
    ]
    # fmt: on


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic manifests and a checkpoint of the tiny model after 30 updates."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    # 4 valid segments: fewer than fairseq-validate's batch-size multiple of 8
    write_synthetic_dataset(
        str(data), n_recordings=4, seconds_per_recording=20, n_valid_recordings=1, seed=3
    )
    save_dir = root / "checkpoints"
    result = run_command(train_command(data, save_dir, 30))
    assert result.returncode == 0, result.stderr[-3000:]
    return data, save_dir, result.stdout + result.stderr


def test_hydra_train_runs_from_the_repository_root(trained):
    data, save_dir, log = trained
    assert (save_dir / "checkpoint_last.pt").is_file()
    assert (save_dir / "checkpoint_best.pt").is_file()
    train_stats = parse_fairseq_log(log, "train")
    assert train_stats and train_stats[-1]["num_updates"] == 30
    for key in ("loss", "accuracy", "code_perplexity", "prob_perplexity", "temp"):
        assert np.isfinite(train_stats[-1][key]), key
    assert "task: meg_pretraining" in log or "MegPretrainingTask" in log
    assert "Meg2VecModel" in log


def test_check_pretraining_reads_the_trainers_log(trained, tmp_path):
    # the tool on a real fairseq-hydra-train log (simple format, the tiny config's 20 negatives)
    _data, _save_dir, log = trained
    path = tmp_path / "train.log"
    path.write_text(log)
    result = run_command(["python", "tools/check_pretraining.py", str(path)])
    assert result.returncode == 0, result.stderr
    assert f"{path}: 30 updates" in result.stdout and "(chance 0.048)" in result.stdout
    assert "too early to judge 'stuck near chance'" in result.stdout


def test_training_resumes_from_checkpoint_last(trained, tmp_path):
    data, save_dir, _ = trained
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "checkpoint_last.pt").write_bytes((save_dir / "checkpoint_last.pt").read_bytes())
    result = run_command(train_command(data, resumed_dir, 40))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "Loaded checkpoint" in log and "@ 30 updates" in log
    assert parse_fairseq_log(log, "train")[-1]["num_updates"] == 40


def test_fairseq_validate_on_the_checkpoint(trained):
    data, save_dir, _ = trained
    result = run_command(
        [
            "fairseq-validate",
            str(data),
            "--user-dir",
            "meg2vec_fairseq",
            "--task",
            "meg_pretraining",
            "--path",
            str(save_dir / "checkpoint_best.pt"),
            "--valid-subset",
            "valid",
            "--max-tokens",
            "10000",
        ]
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "valid on 'valid' subset" in log
    record = [line for line in log.splitlines() if "valid on 'valid' subset" in line][-1]
    assert "code_perplexity" in record and "accuracy" in record
    assert "nsentences 4 " in record  # every validation segment was used


def test_extract_features_tool(trained, tmp_path):
    data, save_dir, _ = trained
    dest = tmp_path / "features"
    result = run_command(extract_command(save_dir, data / "valid.tsv", dest, "1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (dest / "features.tsv").read_text().splitlines()[1:]
    assert len(rows) == len((data / "valid.tsv").read_text().splitlines()) - 1
    relative, frames = rows[0].split("\t")
    features = np.load(dest / relative)
    # 1250 samples -> 120 frames with the tiny stack; 128-dim Transformer output
    assert features.shape == (int(frames), 128) == (120, 128)
    assert np.isfinite(features).all() and features.std() > 0


def test_extract_features_tool_writes_two_depths_side_by_side(trained, tmp_path):
    data, save_dir, _ = trained
    written = {}
    for layer in ("cnn", "last", "cnn+last"):
        dest = tmp_path / layer
        result = run_command(extract_command(save_dir, data / "valid.tsv", dest, layer))
        assert result.returncode == 0, result.stderr[-3000:]
        relative = (dest / "features.tsv").read_text().splitlines()[1].split("\t")[0]
        written[layer] = np.load(dest / relative)
    assert written["cnn+last"].shape == (120, 128 + 128)
    np.testing.assert_allclose(
        written["cnn+last"], np.hstack([written["cnn"], written["last"]]), rtol=1e-5, atol=1e-5
    )


def test_extract_features_refuses_a_bad_layer(trained, tmp_path):
    data, save_dir, _ = trained
    result = run_command(extract_command(save_dir, data / "valid.tsv", tmp_path, "9"))
    assert result.returncode == 1
    assert "layer 9 out of range: the model has 4 Transformer layers" in result.stderr


def test_nan_segment_stops_training_with_the_file_named(tmp_path):
    segments = random_segments(4, samples=600)
    segments[2][10, 50:60] = np.nan
    data = tmp_path / "data"
    write_manifest(data, segments, split="train")
    write_manifest(data, random_segments(2, samples=600, seed=1), split="valid")
    result = run_command(
        train_command(
            data, tmp_path / "ck", 5, "task.max_sample_size=null", "task.min_sample_size=0"
        )
    )
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "train-002.npy" in log and "NaN/inf" in log
    assert not any(np.isnan(r.get("loss", 0.0)) for r in parse_fairseq_log(log, "train_inner"))


def test_bad_manifest_stops_before_training(tmp_path):
    data = tmp_path / "data"
    write_manifest(data, random_segments(2) + random_segments(1, channels=300), split="train")
    write_manifest(data, random_segments(1, seed=1), split="valid")
    result = run_command(train_command(data, tmp_path / "ck", 5))
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "train-002.npy: 300 channels, but the model reads in_channels=306" in log
    assert "num_updates" not in log
