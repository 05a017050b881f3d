"""``task.wire_dtype``: float16 batches from the read to the device, float32 by default."""

import numpy as np
import pytest
import torch
from meg_fixtures import parse_fairseq_log, random_segments, run_command, write_manifest

from meg2vec_fairseq.data.meg_dataset import MegDataError, MegNpyDataset
from meg2vec_fairseq.features import zscore_channels
from meg2vec_fairseq.tasks.meg_pretraining import MegDataExit, match_source_dtype


def load(manifest, **kwargs):
    options = dict(sample_rate=250, in_channels=306, max_sample_size=1000, min_sample_size=100,
                   max_abs_value=1000.0)
    options.update(kwargs)
    return MegNpyDataset(str(manifest), **options)


def collate(dataset, seed=0):
    np.random.seed(seed)  # same crops for both dtypes
    return dataset.collater([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("pad", [False, True])
def test_collater_returns_the_wire_dtype_with_float16_rounding_only(tmp_path, pad):
    lengths = [1250, 700, 900]
    segments = [random_segments(1, samples=n, seed=n)[0] * 30 for n in lengths]
    manifest = write_manifest(tmp_path, segments)
    default = collate(load(manifest, pad=pad))
    half = collate(load(manifest, pad=pad, wire_dtype="float16"))
    assert default["net_input"]["source"].dtype == torch.float32
    assert half["net_input"]["source"].dtype == torch.float16
    assert half["net_input"]["source"].shape == default["net_input"]["source"].shape
    torch.testing.assert_close(half["net_input"]["source"],
                               default["net_input"]["source"].to(torch.float16), rtol=0, atol=0)
    assert half["id"].tolist() == default["id"].tolist()
    if pad:
        assert torch.equal(half["net_input"]["padding_mask"], default["net_input"]["padding_mask"])
        assert half["net_input"]["padding_mask"].dtype == torch.bool
    else:
        assert "padding_mask" not in half["net_input"]


def test_float16_segments_travel_exactly(tmp_path):
    segment = random_segments(1, samples=1000)[0].astype(np.float16)
    batch = collate(load(write_manifest(tmp_path, [segment]), wire_dtype="float16"))
    source = batch["net_input"]["source"]
    assert source.dtype == torch.float16
    np.testing.assert_array_equal(source[0].numpy(), segment)


def test_normalize_computes_in_float32_then_casts(tmp_path):
    segment = (random_segments(1, samples=1000)[0] * 1e-3 + 500).astype(np.float32)  # offset
    manifest = write_manifest(tmp_path, [segment])
    source = load(manifest, normalize=True, wire_dtype="float16")[0]["source"]
    expected = zscore_channels(torch.from_numpy(segment)).to(torch.float16)
    torch.testing.assert_close(source, expected, rtol=0, atol=0)
    assert source.abs().max() < 10  # a float16 z-score would have lost the 1e-3 signal


def test_value_check_runs_on_what_is_read(tmp_path):
    segments = random_segments(2, samples=1000)
    segments[1][3, 10] = 2000.0  # beyond max_abs_value, well within float16's range
    dataset = load(write_manifest(tmp_path, segments), wire_dtype="float16")
    with pytest.raises(MegDataError, match=r"line 3 .* 1 values beyond \+-1000"):
        dataset[1]


@pytest.mark.parametrize("max_abs_value", [None, 0, 1e5])
def test_float16_needs_a_bound_within_its_range(tmp_path, max_abs_value):
    manifest = write_manifest(tmp_path, random_segments(1, samples=1000))
    with pytest.raises(MegDataError, match="task.max_abs_value to at most 65504"):
        load(manifest, wire_dtype="float16", max_abs_value=max_abs_value)
    load(manifest, wire_dtype="float16", max_abs_value=max_abs_value, normalize=True)


def test_unknown_wire_dtype_is_refused(tmp_path):
    manifest = write_manifest(tmp_path, random_segments(1, samples=1000))
    with pytest.raises(MegDataError, match="wire_dtype must be one of float32, float16"):
        load(manifest, wire_dtype="int8")


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_source_is_cast_to_the_model_dtype(model_dtype):
    model = torch.nn.Linear(2, 2).to(model_dtype)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    sample = {"id": torch.arange(2),
              "net_input": {"source": torch.randn(2, 3, 5).half(), "padding_mask": mask}}
    out = match_source_dtype(sample, model)
    assert out["net_input"]["source"].dtype == model_dtype
    assert out["net_input"]["padding_mask"] is mask and out["id"] is sample["id"]
    assert torch.equal(out["net_input"]["source"], sample["net_input"]["source"].to(model_dtype))
    same = {"net_input": {"source": torch.zeros(1, 3, 5, dtype=model_dtype)}}
    assert match_source_dtype(same, model) is same
    assert match_source_dtype({}, model) == {}


def test_task_names_the_option_for_a_bad_value(tmp_path):
    from omegaconf import OmegaConf

    from meg2vec_fairseq.tasks.meg_pretraining import MegPretrainingConfig, MegPretrainingTask

    write_manifest(tmp_path, random_segments(1, samples=1000))
    cfg = OmegaConf.structured(MegPretrainingConfig(data=str(tmp_path), wire_dtype="int8"))
    task = MegPretrainingTask.setup_task(cfg)
    with pytest.raises(MegDataExit) as exit_:
        task.load_dataset("train")
    assert str(exit_.value) == (
        "error: task.wire_dtype=int8 is not supported: use float32 or float16")


def _train_command(data, save_dir, *extra):
    return ["fairseq-hydra-train", "--config-dir", "config/pretraining", "--config-name",
            "meg2vec_tiny", "common.user_dir=meg2vec_fairseq", f"task.data={data}",
            f"checkpoint.save_dir={save_dir}", "optimization.max_update=2",
            "common.log_interval=1", *extra]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("wire") / "data"
    write_manifest(data, random_segments(4, samples=600, seed=3), split="train")
    write_manifest(data, random_segments(1, samples=600, seed=4), split="valid")
    return data


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_card_command_trains_with_float16_on_the_wire(tiny_data, tmp_path, workers):
    result = run_command(_train_command(tiny_data, tmp_path / "ck", "task.wire_dtype=float16",
                                        f"dataset.num_workers={workers}"))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    train = parse_fairseq_log(log, "train")
    assert train and train[-1]["num_updates"] == 2 and np.isfinite(train[-1]["loss"])
    assert (tmp_path / "ck" / "checkpoint_last.pt").is_file()


@pytest.mark.slow
def test_card_command_with_a_bad_wire_dtype_is_one_error_line(tiny_data, tmp_path):
    result = run_command(_train_command(tiny_data, tmp_path / "ck", "task.wire_dtype=int8"))
    text = result.stdout + result.stderr
    assert result.returncode == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors == ["error: task.wire_dtype=int8 is not supported: use float32 or float16"]
