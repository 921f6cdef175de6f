"""`vae-study estimate` predicts a study's time from timed steps: the arithmetic, the bounds it
marks, and real timings of a tiny study's rungs (speed itself is the benchmark's, not a test's)."""

from __future__ import annotations

import math

import pytest
from helpers import TINY_PARAMS, tiny_params

from stages import estimate
from stages.layout import Layout


def timings(params, step_s=0.5, valid_s=0.1, evals_per_s=1000.0, eval_base_s=0.0, eval_images=0):
    return {name: estimate.Timing(step_s, valid_s, evals_per_s, eval_base_s, eval_images)
            for name in params.decoders}


def test_a_run_costs_its_epochs_of_steps_and_validation_plus_its_iw_evaluations():
    params = tiny_params(binarize={**TINY_PARAMS["binarize"], "train_subset": 1000},
                         train={**TINY_PARAMS["train"], "epochs": 3, "batch_size": 64, "valid_subset": 130},
                         evaluate={**TINY_PARAMS["evaluate"], "k": 50, "n_test": 400}, seeds=[0, 1])
    by_rung = {e.rung: e for e in estimate.predict(params, timings(params, eval_base_s=7.0, eval_images=20))}
    run = by_rung["pixelcnn_2"]
    # 3 epochs x (ceil(1000 / 64) = 16 steps x 0.5 s + 1 validation batch of max(64, 256) x 0.1 s)
    assert run.train_s == pytest.approx(3 * (16 * 0.5 + 1 * 0.1))
    # the first 20 images' whole evaluation, then (400 - 20) images x K samples at the IW rate
    assert run.evaluate_s == pytest.approx(7.0 + 380 * 50 / 1000.0)
    assert run.total_s == pytest.approx(2 * (run.train_s + run.evaluate_s + 2 * estimate.STAGE_OVERHEAD_S))
    assert run.bound == ""  # a fixed schedule: the prediction, not a bound
    minutes = estimate.study_minutes(list(by_rung.values()))
    assert minutes == pytest.approx((sum(e.total_s for e in by_rung.values()) + estimate.FIXED_S) / 60)


def test_all_training_images_count_when_no_subset_is_set():
    params = tiny_params()  # train_subset null: 60,000 - valid_size training images
    run = estimate.predict(params, timings(params, step_s=1.0, valid_s=0.0))[0]
    assert run.train_s == pytest.approx(2 * math.ceil((60000 - 100) / 50))


def test_early_stopping_makes_the_cap_an_upper_bound_and_the_aggressive_loop_a_lower_one():
    stopped = tiny_params(train={**TINY_PARAMS["train"], "epochs": 6, "patience": 2})
    assert {e.bound for e in estimate.predict(stopped, timings(stopped))} == {"upper"}
    grid = tiny_params(objectives={"elbo": {}, "aggressive": {"aggressive": True}})
    bounds = {e.rung: e.bound for e in estimate.predict(grid, timings(grid))}
    assert bounds["pixelcnn_2__aggressive"] == "lower" and bounds["pixelcnn_2__elbo"] == ""
    text = estimate.table(estimate.predict(grid, timings(grid)), budget_min=1e6)
    assert "| at least (inner loop not counted) |" in text and "which fits a 1e+06-minute budget" in text
    assert "does NOT fit a 1-minute budget" in estimate.table(estimate.predict(grid, timings(grid)), 1)


def test_every_rung_of_a_tiny_study_is_timed_on_this_machine(tmp_path):
    params = tiny_params(objectives={"elbo": {}, "beta": {"beta": 0.5}})
    measured = estimate.measure(params, Layout(tmp_path), progress=False)
    assert set(measured) == set(params.decoders)
    for t in measured.values():
        assert 0 < t.step_s < 10 and 0 < t.valid_s < 10 and t.evals_per_s > 0
        assert 0 < t.eval_base_s < 60 and t.eval_images == params.evaluate.batch_size
    # a rung's cells cost the same per step under every objective: timed once, not per cell
    assert measured["pixelcnn_2__elbo"] is measured["pixelcnn_2__beta"]
    assert measured["linear__elbo"] is not measured["pixelcnn_2__elbo"]
