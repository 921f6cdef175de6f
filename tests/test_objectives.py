"""The training objectives (stages.objectives): beta < 1, and aggressive inference-network
training (He et al. 2019), whose inner loop stops by its rule, whose reported ELBO is the true
one, and which resumes after an interruption with the same weights as an uninterrupted run."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import interrupted, synthetic_digits, tiny_params

from stages.checkpoint import load_checkpoint
from stages.data import Split
from stages.objectives import AggressivePhase, Objective, StepContext, encoder_inner_loop, step_only
from stages.params import ObjectiveConfig
from stages.runtime import Precision, generator
from stages.model import build_model
from stages.train import TrainRun, train_rung

FP32 = Precision(torch.device("cpu"), None)
AGGRESSIVE = {"aggressive": True, "aggressive_max_inner_steps": 12, "aggressive_check_every": 3}


def split(n: int, seed: int) -> Split:
    x, y = synthetic_digits(n, seed)
    bits = (np.random.default_rng(seed).random(x.shape) * 255 < x).astype(np.float32)
    return Split(torch.from_numpy(bits).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))


TRAIN, VALID = split(300, 0), split(100, 1)


PIXELCNN = {"family": "pixelcnn", "n_layers": 2, "channels": 4, "first_kernel_size": 3}


def params_with(base=PIXELCNN, **objective):
    return tiny_params(decoders={"plain": base, "tried": {**base, **objective}})


def test_beta_weighs_the_kl_term_and_multiplies_the_warmup_ramp():
    objective = Objective(warmup_steps=10, free_bits=0.0, beta_max=0.5)
    assert [objective.beta(s) for s in (0, 5, 10, 99)] == [0.0, 0.25, 0.5, 0.5]
    log_px_z, kl = torch.tensor([-10.0, -20.0]), torch.tensor([[1.0, 3.0], [3.0, 5.0]])  # KL mean 6
    assert Objective.of(ObjectiveConfig(beta=0.5)).loss(log_px_z, kl, 0).item() == pytest.approx(15 + 3)
    assert Objective.of(ObjectiveConfig()).loss(log_px_z, kl, 0).item() == pytest.approx(15 + 6)


def test_a_step_on_one_part_leaves_the_other_part_and_its_adam_state_alone():
    params = tiny_params()
    model = build_model(params.rung("pixelcnn_2"), params.encoder)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    t = model.elbo_terms(TRAIN.x[:20], generator=generator(0))
    step_only(model, model.encoder, optimizer, -t.elbo.mean())
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in decoder_before.items())
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert all(p not in optimizer.state for p in model.decoder.parameters())  # no Adam moments either


@pytest.mark.parametrize("losses, steps", [
    ([5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6], 12),  # always falling: the cap
    ([5, 5, 5, 4, 4, 4, 6, 6, 6, 0, 0, 0], 9),  # block 3 (mean 6) does not beat block 2 (mean 4)
    ([3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0], 6),  # equal is not better
])
def test_the_inner_loop_stops_when_a_block_of_steps_no_longer_beats_the_one_before(losses, steps):
    """encoder_inner_loop on a model whose loss follows a script: it stops exactly where He et
    al.'s rule says (check every 3 steps, at most 12)."""
    script = iter(losses)

    class Scripted(torch.nn.Module):  # a real module whose next loss is the script's next value
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)

        def elbo_terms(self, x, generator=None):
            value = float(next(script))
            w = self.encoder.weight.sum() * 0 + value
            return type("T", (), {"log_px_z": -w.expand(len(x)), "kl_per_dim": torch.zeros(len(x), 1)})

    model = Scripted()
    optimizer = torch.optim.Adam(model.parameters())
    ctx = StepContext(model, optimizer, Objective(0, 0.0), TRAIN, 8, FP32)
    taken = encoder_inner_loop(ctx, ObjectiveConfig(**AGGRESSIVE), 0, generator(0), generator(1))
    assert taken == steps


def test_the_aggressive_phase_ends_for_good_once_mi_stops_rising():
    phase = AggressivePhase(on=True)
    for mi, on in ((0.5, True), (0.9, True), (0.8, False), (1.5, False)):
        phase.end_of_epoch(mi)
        assert phase.on is on
    assert phase.best_mi == 1.5


def test_aggressive_training_reports_the_true_elbo_and_logs_its_phase():
    params = params_with(**AGGRESSIVE)
    config = dataclasses.replace(params.train, epochs=3)
    state, history = train_rung(TrainRun(params.rung("tried"), params.encoder, config, 0), TRAIN, VALID, FP32,
                                progress=False)
    assert history["aggressive"].iloc[0] == 1 and 1 <= history["inner_steps_per_step"].iloc[0] <= 12
    assert (np.diff(history["aggressive"]) <= 0).all()  # once off, off for good
    assert np.allclose(history.valid_elbo_nats, -(history.valid_kl_nats + history.valid_rec_nats))
    assert np.allclose(history.train_elbo_nats, -(history.train_kl_nats + history.train_rec_nats))
    # the reported valid ELBO is the true one: recompute it from the returned best weights
    model = build_model(params.rung("tried"), params.encoder)
    model.load_state_dict(state["model_state"])
    from stages.train import mean_elbo
    again = mean_elbo(model, VALID, FP32, 256, 0)
    assert again["elbo"] == pytest.approx(state["valid_elbo_nats"], abs=1e-4)
    assert math.isfinite(history["valid_mi_nats"].iloc[0])


def test_aggressive_training_resumes_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    params = params_with(**AGGRESSIVE)
    config = dataclasses.replace(params.train, epochs=3)
    run = TrainRun(params.rung("tried"), params.encoder, config, 5)
    whole, whole_history = train_rung(run, TRAIN, VALID, FP32, progress=False)
    scratch = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C early in epoch 2, after epoch 1 was saved
        train_rung(run, interrupted(TRAIN, scratch), VALID, FP32, resume_path=scratch, progress=False)
    assert load_checkpoint(scratch)["epoch"] == 1
    assert load_checkpoint(scratch)["aggressive"]["best_mi"] == whole_history["valid_mi_nats"].iloc[0]
    resumed, resumed_history = train_rung(run, TRAIN, VALID, FP32, resume_path=scratch, progress=False)
    for key, tensor in whole["model_state"].items():
        assert torch.equal(tensor, resumed["model_state"][key]), key
    cols = [c for c in whole_history.columns if c != "seconds"]
    assert whole_history[cols].equals(resumed_history[cols])


def test_beta_below_one_keeps_more_kl_and_logs_its_weight():
    params = params_with({"family": "linear"}, beta=0.5)
    config = dataclasses.replace(params.train, epochs=2)
    runs = {name: train_rung(TrainRun(params.rung(name), params.encoder, config, 0), TRAIN, VALID, FP32,
                             progress=False)[1] for name in ("plain", "tried")}
    assert runs["tried"]["valid_kl_nats"].iloc[-1] > runs["plain"]["valid_kl_nats"].iloc[-1]
    assert list(runs["tried"]["beta"]) == [0.5, 0.5]
    assert "aggressive" not in runs["plain"].columns
