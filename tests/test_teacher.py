"""data2vec targets of ``meg2vec`` (``target_teacher_layers``): the EMA teacher, its targets,
the extra loss, and a ``fairseq-hydra-train`` run in which fairseq's trainer moves the teacher."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.wav2vec_criterion import Wav2vecCriterion
from meg_fixtures import parse_fairseq_log, run_command
from test_model import build_meg2vec

TEACHER = dict(
    extractor_mode="layer_norm",
    target_codebook_size=64,
    target_teacher_layers=2,
    target_teacher_decay=0.9,
    target_teacher_end_decay=0.99,
    target_teacher_anneal_updates=10,
)


def sample(b=3, c=8, t=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"id": torch.arange(b), "net_input": {"source": torch.randn(b, c, t, generator=g)}}


def criterion(loss_weights):
    return Wav2vecCriterion(task=None, infonce=True, loss_weights=list(loss_weights))


def teacher_params(model):
    return {k: v.detach().clone() for k, v in model.teacher.teacher.named_parameters()}


def test_teacher_starts_as_the_student_and_gets_no_gradient():
    model = build_meg2vec(in_channels=8, **TEACHER).train()
    student = dict(model.encoder.named_parameters())
    for name, param in model.teacher.teacher.named_parameters():
        torch.testing.assert_close(param, student[name])
        assert not param.requires_grad
    out = model(**sample()["net_input"])
    extra = model.get_extra_losses(out)
    assert len(extra) == 3  # diversity, features_pen, teacher
    torch.testing.assert_close(extra[2], out["teacher_loss"])
    loss, _, logging = criterion([1.0, 10, 1.0])(model, sample())
    assert torch.isfinite(loss) and logging["loss_3"] > 0  # loss_0 is the contrastive loss
    loss.backward()
    assert model.teacher.head.weight.grad.abs().sum() > 0
    assert model.encoder.layers[0].fc1.weight.grad.abs().sum() > 0  # the student learns
    assert all(p.grad is None for p in model.teacher.teacher.parameters())


def test_targets_are_the_mean_of_the_top_layers_each_instance_normed():
    model = build_meg2vec(in_channels=8, **{**TEACHER, "target_teacher_layers": 1}).eval()
    features = torch.randn(2, 30, 32)
    _, layers = model.teacher.teacher.extract_features(features)
    assert len(layers) == 2
    top = model.teacher.targets(features, None)
    expected = F.instance_norm(layers[-1][2].permute(1, 2, 0)).transpose(1, 2)
    torch.testing.assert_close(top, expected)
    assert torch.allclose(top.mean(dim=1), torch.zeros(2, 32), atol=1e-5)  # per feature, in time
    model.teacher.top_layers = 2
    both = model.teacher.targets(features, None)
    first = F.instance_norm(layers[0][2].permute(1, 2, 0)).transpose(1, 2)
    torch.testing.assert_close(both, (first + expected) / 2)


def test_the_teacher_reads_the_features_before_time_masking():
    model = build_meg2vec(in_channels=8, mask_prob=0.6, **TEACHER).train()
    seen = []
    targets = model.teacher.targets
    model.teacher.targets = lambda features, padding: seen.append(features) or targets(
        features, padding
    )
    model(**sample()["net_input"])
    mask_emb = model.mask_emb.detach()
    assert not (seen[0] == mask_emb).all(dim=-1).any()  # no masked frame in the teacher's input
    assert model._teacher_input is None  # not kept after the forward


def test_ema_step_moves_the_teacher_once_per_new_update_with_the_annealed_decay():
    model = build_meg2vec(in_channels=8, **TEACHER).train()
    teacher = model.teacher
    assert teacher.decay_at(0) == 0.9 and teacher.decay_at(10) == teacher.decay_at(50) == 0.99
    assert teacher.decay_at(5) == pytest.approx(0.945)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.set_num_updates(0)  # the task calls it before each forward: the first is the start
    for update in (1, 2):
        before = teacher_params(model)
        loss, _, _ = criterion([1.0, 10, 1.0])(model, sample(seed=update))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.set_num_updates(update)
        student = dict(model.encoder.named_parameters())
        decay = teacher.decay_at(update)
        for name, param in model.teacher.teacher.named_parameters():
            expected = decay * before[name] + (1 - decay) * student[name].detach()
            torch.testing.assert_close(param, expected, rtol=1e-5, atol=1e-6)
        moved = teacher_params(model)
        model.set_num_updates(update)  # gradient accumulation: same count, no second step
        for name, param in model.teacher.teacher.named_parameters():
            torch.testing.assert_close(param, moved[name])
    assert any(not torch.equal(moved[k], before[k]) for k in moved)
    model.eval().set_num_updates(3)  # validation never moves the teacher
    for name, param in model.teacher.teacher.named_parameters():
        torch.testing.assert_close(param, moved[name])


def test_teacher_is_saved_in_checkpoints_and_removed_for_fine_tuning():
    model = build_meg2vec(in_channels=8, **TEACHER)
    with torch.no_grad():
        model.teacher.teacher.layers[0].fc1.weight.add_(1.0)  # a teacher unlike the student
    state = model.state_dict()
    assert "teacher.teacher.layers.0.fc1.weight" in state
    restored = build_meg2vec(in_channels=8, **TEACHER)
    restored.load_state_dict(state)
    torch.testing.assert_close(
        restored.teacher.teacher.layers[0].fc1.weight, model.teacher.teacher.layers[0].fc1.weight
    )
    restored.remove_pretraining_modules()
    assert restored.teacher is None
    features = restored(**sample()["net_input"], mask=False, features_only=True)["x"]
    assert torch.isfinite(features).all()


def test_teacher_trains_in_bfloat16():
    model = build_meg2vec(in_channels=8, **TEACHER).train().to(torch.bfloat16)
    data = sample()
    data["net_input"]["source"] = data["net_input"]["source"].to(torch.bfloat16)
    loss, _, _ = criterion([1.0, 10, 1.0])(model, data)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(model.teacher.head.weight.grad.float()).all()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"target_teacher_layers": 3}, r"target_teacher_layers=3: must be in 0\.\.2"),
        ({"target_teacher_layers": -1}, "target_teacher_layers=-1"),
        ({"target_teacher_layers": 1, "target_teacher_decay": 0.0}, r"target_teacher_decay=0\.0"),
        ({"target_teacher_layers": 1, "target_teacher_decay": 0.99,
          "target_teacher_end_decay": 0.9}, r"target_teacher_end_decay=0\.9"),
        ({"target_teacher_layers": 1, "target_teacher_anneal_updates": -5},
         "target_teacher_anneal_updates=-5"),
    ],
)
def test_bad_teacher_options_are_one_line_errors_at_build(options, message):
    with pytest.raises(ValueError, match=message) as err:
        build_meg2vec(in_channels=8, **options)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_hydra_train_moves_the_teacher_and_saves_it(tmp_path):
    from meg2vec_fairseq.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(
        str(data), n_recordings=2, seconds_per_recording=10, n_valid_recordings=1, seed=5
    )
    # fmt: off
    command = [
        "fairseq-hydra-train", "--config-dir", "config/pretraining", "--config-name",
        "meg2vec_tiny", "common.user_dir=meg2vec_fairseq", f"task.data={data}",
        f"checkpoint.save_dir={tmp_path / 'checkpoints'}", "optimization.max_update=4",
        "common.log_interval=1", "dataset.validate_interval=1",
        "model.target_teacher_layers=2", "model.target_teacher_decay=0.5",
        "model.target_teacher_end_decay=0.9", "model.target_teacher_anneal_updates=4",
        "criterion.loss_weights=[1.0,10,1.0,1.0,1.0]",
    ]
    # fmt: on
    result = run_command(command, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    train = parse_fairseq_log(log, "train")
    assert train and train[-1]["num_updates"] == 4 and np.isfinite(train[-1]["loss_3"])
    state = torch.load(tmp_path / "checkpoints" / "checkpoint_last.pt", weights_only=False)
    weights = state["model"]
    name = "layers.0.fc1.weight"
    teacher, student = weights[f"teacher.teacher.{name}"], weights[f"encoder.{name}"]
    assert not torch.allclose(teacher, student)  # fairseq's trainer stepped the EMA
