"""Training: the loss goes down, runs resume exactly, divergence stops cleanly."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import interrupted, synthetic_digits, tiny_params

from stages.checkpoint import load_checkpoint, load_model, save_checkpoint
from stages.data import Split
from stages.errors import TrainingDiverged
from stages.live import EpochLog, read_history
from stages.runtime import Precision
from stages.objectives import Objective
from stages.train import TrainRun, train_rung

FP32 = Precision(torch.device("cpu"), None)


def split(n: int, seed: int) -> Split:
    x, y = synthetic_digits(n, seed)
    g = np.random.default_rng(seed)
    bits = (g.random(x.shape) * 255 < x).astype(np.float32)
    return Split(torch.from_numpy(bits).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))


TRAIN, VALID = split(300, 0), split(100, 1)


def test_a_few_epochs_of_training_raise_the_validation_elbo():
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=3)
    state, history = train_rung(TrainRun(params.rung("linear"), params.encoder, config, 0), TRAIN, VALID,
                                FP32, progress=False)
    assert list(history.epoch) == [1, 2, 3]
    assert history.valid_elbo_nats.iloc[-1] > history.valid_elbo_nats.iloc[0] + 20
    assert state["epoch"] == int(history.valid_elbo_nats.idxmax()) + 1  # best-validation weights
    assert np.allclose(history.valid_elbo_nats, -(history.valid_kl_nats + history.valid_rec_nats))


def test_converged_after_patience_epochs_without_a_gain():
    config = dataclasses.replace(tiny_params().train, epochs=10, patience=3)
    assert [config.converged(epoch, best_epoch=2) for epoch in (2, 3, 4, 5, 6)] == \
        [False, False, False, True, True]
    assert not dataclasses.replace(config, patience=None).converged(10, best_epoch=1)


def test_early_stopping_stops_patience_epochs_after_the_best_and_keeps_its_weights():
    """A gain must beat the best by min_delta_nats: at 1000 nats only epoch 1 counts, so the
    run stops after epoch 1 + patience and returns epoch 1's weights, the same weights as a
    one-epoch run (every epoch's random numbers depend on (seed, epoch) only)."""
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=10, patience=2, min_delta_nats=1000.0)
    rung = params.rung("linear")
    state, history = train_rung(TrainRun(rung, params.encoder, config, 0), TRAIN, VALID, FP32, progress=False)
    assert list(history.epoch) == [1, 2, 3]
    assert history.valid_elbo_nats.iloc[-1] > history.valid_elbo_nats.iloc[0]  # it was still learning
    assert (state["epoch"], state["epochs_trained"], state["converged"]) == (1, 3, True)
    one_epoch = dataclasses.replace(params.train, epochs=1)
    reference, _ = train_rung(TrainRun(rung, params.encoder, one_epoch, 0), TRAIN, VALID, FP32,
                              progress=False)
    for key, tensor in reference["model_state"].items():
        assert torch.equal(tensor, state["model_state"][key]), key


def test_without_patience_every_epoch_runs_and_the_best_one_is_kept():
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=4, patience=None, min_delta_nats=1000.0)
    state, history = train_rung(TrainRun(params.rung("linear"), params.encoder, config, 0), TRAIN, VALID,
                                FP32, progress=False)
    assert list(history.epoch) == [1, 2, 3, 4]
    assert (state["epoch"], state["epochs_trained"], state["converged"]) == (1, 4, False)  # no criterion


def test_an_early_stopped_run_resumes_to_the_same_stop(tmp_path):
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=10, patience=2, min_delta_nats=1000.0)
    run = TrainRun(params.rung("linear"), params.encoder, config, 3)
    whole, whole_history = train_rung(run, TRAIN, VALID, FP32, progress=False)
    scratch = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C early in epoch 3
        train_rung(run, interrupted(TRAIN, scratch, after_epoch=2), VALID, FP32, resume_path=scratch,
                   progress=False)
    assert load_checkpoint(scratch)["epoch"] == 2
    resumed, resumed_history = train_rung(run, TRAIN, VALID, FP32, resume_path=scratch, progress=False)
    assert list(resumed_history.epoch) == list(whole_history.epoch) == [1, 2, 3]
    assert (resumed["epoch"], resumed["epochs_trained"]) == (whole["epoch"], whole["epochs_trained"])
    for key, tensor in whole["model_state"].items():
        assert torch.equal(tensor, resumed["model_state"][key]), key


def test_a_resumed_run_logs_every_epoch_once_through_dvclive(tmp_path):
    """DVC deletes the logger's folder before it reruns the stage; the resumed run replays the
    epochs it had, so the logged history equals an uninterrupted run's."""
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=3)
    run = TrainRun(params.rung("linear"), params.encoder, config, 7)

    def logged(folder, train=TRAIN, **kwargs):
        epoch_log = EpochLog(folder)
        try:
            return train_rung(run, train, VALID, FP32, progress=False, log=epoch_log.log, **kwargs)
        finally:
            epoch_log.close()

    _, whole = logged(tmp_path / "whole")
    scratch, resumed_dir = tmp_path / "resume.pt", tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        logged(resumed_dir, interrupted(TRAIN, scratch), resume_path=scratch)
    assert list(read_history(resumed_dir)["epoch"]) == [1]
    shutil.rmtree(resumed_dir)  # what `dvc repro` does to a stage's outputs before rerunning it
    logged(resumed_dir, resume_path=scratch)
    ours, theirs = read_history(tmp_path / "whole"), read_history(resumed_dir)
    assert list(ours["epoch"]) == [1, 2, 3]
    cols = [c for c in whole.columns if c != "seconds"]
    pd.testing.assert_frame_equal(ours[cols], theirs[cols])
    pd.testing.assert_frame_equal(ours[cols], whole[cols], check_dtype=False)
    metrics = json.loads((resumed_dir / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["valid_kl_nats"] == pytest.approx(whole["valid_kl_nats"].iloc[-1])


@pytest.mark.parametrize("rung", ["linear", "pixelcnn_2"])
def test_a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, rung):
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=3)
    run = TrainRun(params.rung(rung), params.encoder, config, 7)
    whole, whole_history = train_rung(run, TRAIN, VALID, FP32, progress=False)

    scratch = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C early in epoch 2, after epoch 1 was saved
        train_rung(run, interrupted(TRAIN, scratch), VALID, FP32, resume_path=scratch, progress=False)
    assert load_checkpoint(scratch)["epoch"] == 1
    resumed, resumed_history = train_rung(run, TRAIN, VALID, FP32, resume_path=scratch, progress=False)

    assert resumed["epoch"] == whole["epoch"]
    for key, tensor in whole["model_state"].items():
        assert torch.equal(tensor, resumed["model_state"][key]), key
    cols = [c for c in whole_history.columns if c != "seconds"]
    assert whole_history[cols].equals(resumed_history[cols])
    save_checkpoint(tmp_path / "whole.pt", whole)  # the same bytes: DVC sees the same output
    save_checkpoint(tmp_path / "resumed.pt", resumed)
    assert (tmp_path / "whole.pt").read_bytes() == (tmp_path / "resumed.pt").read_bytes()


def test_resume_state_of_another_run_is_ignored(tmp_path):
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=2)
    scratch = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        train_rung(TrainRun(params.rung("linear"), params.encoder, config, 0), interrupted(TRAIN, scratch),
                   VALID, FP32, resume_path=scratch, progress=False)
    assert load_checkpoint(scratch)["epoch"] == 1
    other_seed, history = train_rung(TrainRun(params.rung("linear"), params.encoder, config, 1), TRAIN, VALID,
                                     FP32, resume_path=scratch, progress=False)
    assert list(history.epoch) == [1, 2]  # started from scratch, not from seed 0's epoch 1


def test_a_nan_loss_stops_training_naming_epoch_and_step(tmp_path):
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=2)
    poisoned = Split(TRAIN.x.clone(), TRAIN.labels)
    poisoned.x[0, 0, 5, 5] = float("nan")
    scratch = tmp_path / "resume.pt"
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+ of 6") as err:
        train_rung(TrainRun(params.rung("linear"), params.encoder, config, 0), poisoned, VALID, FP32,
                   resume_path=scratch, progress=False)
    assert "without writing a checkpoint" in str(err.value)
    assert not scratch.exists()


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    with pytest.raises(TrainingDiverged, match="not finite"):
        save_checkpoint(tmp_path / "m.pt", {"model_state": {"w": torch.tensor([1.0, float("inf")])}})
    assert list(tmp_path.iterdir()) == []


def test_kl_warmup_and_free_bits():
    objective = Objective(warmup_steps=100, free_bits=0.5)
    assert objective.beta(0) == 0.0 and objective.beta(50) == 0.5 and objective.beta(500) == 1.0
    assert Objective(0, 0.0).beta(0) == 1.0
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # (B=2, D=2): batch means 0.2 and 3.0
    assert objective.kl_term(kl).item() == pytest.approx(0.5 + 3.0)  # 0.2 is lifted to lambda
    assert Objective(0, 0.0).kl_term(kl).item() == pytest.approx(3.2)


def test_free_bits_and_warmup_let_the_posterior_carry_more_information():
    """Below lambda nats per dimension (or while beta < 1) the KL is not penalized."""
    base = {"family": "pixelcnn", "n_layers": 2, "channels": 4, "first_kernel_size": 3, "z_pathway": "bias"}
    params = tiny_params(decoders={
        "plain": base,
        "free": {**base, "free_bits": 5.0},
        "warm": {**base, "kl_warmup_steps": 10_000},
    })
    config = dataclasses.replace(params.train, epochs=3)
    kl = {}
    for name in ("plain", "free", "warm"):
        state, history = train_rung(TrainRun(params.rung(name), params.encoder, config, 0), TRAIN, VALID,
                                    FP32, progress=False)
        kl[name] = history.valid_kl_nats.iloc[-1]
    assert kl["free"] > kl["plain"] + 3.0
    assert kl["warm"] > kl["plain"] + 3.0


def test_training_writes_a_checkpoint_that_rebuilds_the_model(tmp_path):
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=1)
    state, _ = train_rung(TrainRun(params.rung("pixelcnn_2"), params.encoder, config, 0), TRAIN, VALID, FP32,
                          progress=False)
    save_checkpoint(tmp_path / "m.pt", state)
    model, rung, loaded = load_model(tmp_path / "m.pt", params.rung("pixelcnn_2"), params.encoder)
    assert rung == params.rung("pixelcnn_2") and loaded["seed"] == 0
    assert "optimizer_state" in loaded and loaded["epochs_trained"] == 1
    x = VALID.x[:4]
    with torch.no_grad():
        assert torch.isfinite(model.decoder.log_prob(x, torch.zeros(4, 4))).all()


@pytest.mark.parametrize("craft, expected", [
    (lambda s: s.update(model_state=list(s["model_state"].values())), "model_state is not a mapping of tensors"),
    (lambda s: next(iter(s["model_state"].values())).fill_(float("nan")), "of model_state is not finite"),
    (lambda s: s.pop("epoch"), "`epoch` None is not a finished epoch"),
    (lambda s: s.update(epoch=99), "`epoch` 99 is not a finished epoch before the cap of 3"),
    (lambda s: s.update(history="many"), "`history` is not one row per finished epoch"),
    (lambda s: s["best"].pop("valid_elbo_nats"), "`best` lacks a valid epoch"),
    (lambda s: s.update(optimizer_state={"state": {}, "param_groups": []}), "do not fit this run"),
    (lambda s: s["model_state"].pop(next(iter(s["model_state"]))), "do not fit this run"),
])
def test_a_crafted_resume_file_is_refused_naming_the_field_and_that_it_can_be_deleted(tmp_path, craft, expected):
    from stages.errors import CheckpointError

    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=3)
    run = TrainRun(params.rung("linear"), params.encoder, config, 7)
    scratch = tmp_path / ".scratch" / "train" / "linear-seed7.pt"
    scratch.parent.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        train_rung(run, interrupted(TRAIN, scratch), VALID, FP32, resume_path=scratch, progress=False)
    state = load_checkpoint(scratch)
    craft(state)
    torch.save(state, scratch)  # as someone crafting the file would write it
    with pytest.raises(CheckpointError) as err:
        train_rung(run, TRAIN, VALID, FP32, resume_path=scratch, progress=False)
    assert str(scratch) in str(err.value) and expected in str(err.value), err.value
    assert "resume state: delete it, and the run starts over" in str(err.value)


def test_a_checkpoint_from_before_an_option_existed_still_matches_its_params(tmp_path):
    """An option added later (here the objective's beta and aggressive training) at its default
    describes the same model: the checkpoint loads; at another value it is refused."""
    params = tiny_params()
    config = dataclasses.replace(params.train, epochs=1)
    state, _ = train_rung(TrainRun(params.rung("linear"), params.encoder, config, 0), TRAIN, VALID, FP32,
                          progress=False)
    for key in ("beta", "aggressive", "aggressive_max_inner_steps", "aggressive_check_every"):
        del state["rung"][key]  # what a checkpoint written before these options holds
    save_checkpoint(tmp_path / "old.pt", state)
    model, rung, _ = load_model(tmp_path / "old.pt", params.rung("linear"), params.encoder)
    assert rung == params.rung("linear")
    other = dataclasses.replace(params.rung("linear"),
                                objective=dataclasses.replace(params.rung("linear").objective, beta=0.5))
    from stages.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not match params.yaml"):
        load_model(tmp_path / "old.pt", other, params.encoder)
