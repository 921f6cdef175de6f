"""The report's claims as data: tables whose truth is known in advance (non-monotone, borderline,
rising, with a mitigated rung appended) must never produce a false sentence."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from stages.report import abstract, claims, stats, zadds
from stages.params import parse_rung
from stages.schema import Errors

NAN = math.nan


def table(kl: list[float], std: list[float] | None = None, roles: list[str] | None = None,
          rf: list[int] | None = None, gaps: list[float] | None = None, threshold: float = 1.0,
          n_seeds: int = 3) -> pd.DataFrame:
    """A results table in power order: rung r0 (weakest) .. r{n-1}."""
    n = len(kl)
    std = std or [0.1] * n
    roles = roles or [claims.TREND] * n
    rf = rf or [0] * 2 + [4 * i for i in range(1, n - 1)]
    gaps = gaps or [5.0 - 0.5 * i for i in range(n)]
    rows = []
    for i in range(n):
        rows.append({"rung": f"r{i}", "role": roles[i], "power": i, "receptive_field": rf[i],
                     "family": "pixelcnn" if rf[i] else "conv", "uses_z": roles[i] != claims.NO_Z,
                     "n_seeds": n_seeds, "kl_nats": kl[i], "kl_nats_std": std[i],
                     "bound_gap_nats": gaps[i], "bound_gap_nats_std": 0.1, "mi_nats": min(kl[i], 9.0),
                     "mi_nats_std": 0.1, "mi_cap_nats": 9.2, "probe_accuracy": 0.5,
                     "probe_accuracy_std": 0.01, "config": json.dumps({"family": "conv"}),
                     "verdict": claims.verdict(kl[i], std[i], n_seeds, threshold,
                                               roles[i] != claims.NO_Z)})
    return pd.DataFrame(rows)


def per_seed(results: pd.DataFrame, offsets=(-0.1, 0.0, 0.1)) -> pd.DataFrame:
    return pd.DataFrame([{"rung": r.rung, "seed": s, "kl_nats": r.kl_nats + o}
                         for r in results.itertuples() for s, o in enumerate(offsets)])


def test_a_step_falls_or_rises_only_where_its_95_percent_interval_says_so():
    falling = table([30.0, 25.0, 9.0, 4.0, 0.5])
    c = claims.power_trend(falling, per_seed(falling))
    assert c.numbers["step_words"] == ["falls"] * 3 and c.numbers["falls_everywhere"]
    assert c.numbers["spearman_rho"] == pytest.approx(-0.975, abs=1e-3)
    assert c.numbers["spearman_p"] == pytest.approx(4 / 120)  # r0/r1 tie: two orders as extreme
    assert "exact p = 0.033 (n = 5)" in c.text and not c.numbers["plateau_at_top"]
    bumpy = table([30.0, 25.0, 9.0, 12.0, 0.5])
    c = claims.power_trend(bumpy, per_seed(bumpy))
    assert c.numbers["step_words"] == ["falls", "rises", "falls"]
    assert "it rises at `r2` -> `r3`" in c.text and "It falls at `r0`/`r1` -> `r2`, `r3` -> `r4`" in c.text
    close = table([30.0, 25.0, 9.0, 9.1, 0.5], std=[0.1, 0.1, 0.2, 0.2, 0.1])
    assert claims.power_trend(close, per_seed(close)).numbers["step_words"] == ["falls", "flat", "falls"]


def test_a_plateau_is_named_only_where_the_last_step_is_within_its_interval():
    top_flat = table([30.0, 25.0, 9.0, 2.0, 2.1], std=[0.1, 0.1, 0.1, 0.5, 0.5])
    c = claims.power_trend(top_flat, per_seed(top_flat))
    assert c.numbers["plateau_at_top"] and "KL plateaus at the top" in c.text
    assert "it is flat at `r3` -> `r4`" in c.text
    rising = table([1.0, 2.0, 3.0, 4.0, 5.0])
    c = claims.power_trend(rising, per_seed(rising))
    assert c.numbers["step_words"] == ["rises"] * 3 and "falls" not in c.text


def test_equal_receptive_fields_are_a_tie_not_an_order():
    results = table([30.0, 14.0, 9.0, 4.0, 0.5])  # r0, r1: both receptive field 0
    c = claims.power_trend(results, per_seed(results))
    assert c.numbers["steps"][0]["from"] == ["r0", "r1"] and "`r0`/`r1` share a receptive field" in c.text
    assert "`r0` -> `r1`" not in c.text


@pytest.mark.parametrize("mean, std, n, expected", [
    (0.5, 0.2, 3, claims.COLLAPSED),      # 0.5 + 4.303 * 0.2 / sqrt(3) = 0.997 < 1
    (0.55, 0.2, 3, claims.UNRESOLVED),    # two seed std would call it collapsed; 95 % does not
    (0.7, 0.2, 3, claims.UNRESOLVED),
    (2.19, 0.58, 3, claims.UNRESOLVED),   # [0.75, 3.63] contains 1
    (1.5, 0.2, 3, claims.KEPT),
    (0.97, 0.01, 3, claims.COLLAPSED),    # tight seeds decide even close to the line
    (0.2, NAN, 1, claims.ONE_SEED),       # one seed: no interval, no verdict
    (1.0, 0.0, 3, claims.UNRESOLVED),     # exactly on the line
])
def test_a_verdict_needs_the_95_percent_interval_to_exclude_the_threshold(mean, std, n, expected):
    assert claims.verdict(mean, std, n, 1.0, uses_z=True) == expected
    assert claims.verdict(mean, std, n, 1.0, uses_z=False) == claims.NOT_APPLICABLE


def test_the_verdict_sentence_names_unresolved_rungs_with_the_seeds_that_would_decide():
    results = table([30.0, 25.0, 0.9, 0.4, 0.2], std=[1.0, 1.0, 0.1, 0.1, 0.45])
    c = claims.verdicts(results, 1.0)
    assert c.numbers[claims.UNRESOLVED] == ["r2", "r4"] and c.numbers[claims.COLLAPSED] == ["r3"]
    collapsed_part = c.text.split("collapsed: ")[1].split(";")[0]
    assert "r2" not in collapsed_part and "r4" not in collapsed_part and "`r3`" in collapsed_part
    assert "`r2` (about 7 seeds would resolve it at this spread)" in c.text


def test_an_appended_mitigated_rung_is_never_the_top_the_comparator_or_a_trend_point():
    results = table([30.0, 25.0, 9.0, 0.5, 40.0, 0.01],
                    roles=[claims.TREND] * 4 + [claims.MITIGATED, claims.NO_Z],
                    rf=[0, 0, 4, 24, 192, 192])
    seeds = per_seed(results)
    top = claims.kl_gone_at_top(results, seeds)
    assert top.numbers["top_rung"] == "r3"
    assert top.numbers["share_gone_percent"]["mean"] == pytest.approx(100 * (1 - 0.5 / 27.5), abs=0.05)
    trend = claims.power_trend(results, seeds)
    assert trend.numbers["n_rungs"] == 4 and "`r4`" not in trend.text
    verdicts = claims.verdicts(results, 1.0)
    assert "`r5`" not in verdicts.text


def test_mitigated_comparison_and_no_z_roles_come_from_the_config():
    def rung(raw):
        return parse_rung("r", raw, "r", Errors())

    assert rung({"family": "pixelcnn"}).role == claims.TREND
    assert rung({"family": "pixelcnn", "free_bits": 0.5}).role == claims.MITIGATED
    assert rung({"family": "pixelcnn", "kl_warmup_steps": 10}).role == claims.MITIGATED
    assert rung({"family": "pixelcnn", "z_pathway": "bias"}).role == claims.COMPARISON
    assert rung({"family": "pixelcnn", "conditional": False}).role == claims.NO_Z
    assert rung({"family": "mlp"}).role == claims.TREND


def history(kl_by_epoch: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"rung": r, "seed": s, "epoch": e + 1, "images_seen": 1000 * (e + 1),
             "valid_kl_nats": kl + 0.01 * s, "valid_elbo_nats": -100.0}
            for r, kls in kl_by_epoch.items() for e, kl in enumerate(kls) for s in range(2)]
    return pd.DataFrame(rows)


def test_training_order_reports_a_late_swap_as_unstable_and_a_fixed_order_as_stable():
    results = table([30.0, 25.0, 9.0, 4.0])
    stable = history({"r0": [20, 25, 28, 30], "r1": [15, 20, 23, 25], "r2": [3, 6, 8, 9],
                      "r3": [1, 2, 3, 4]})
    c = claims.training_order(results, stable)
    assert c.numbers["stable_over_last_epochs"] is True and "is stable" in c.text
    assert "NOT" not in c.text
    assert "is -0.95 at every epoch; the order of the rungs never changes." in c.text
    late_swap = history({"r0": [20, 25, 28, 30], "r1": [15, 20, 29, 25], "r2": [3, 6, 8, 9],
                         "r3": [1, 2, 3, 4]})
    c = claims.training_order(results, late_swap)
    assert c.numbers["stable_over_last_epochs"] is False and "NOT stable" in c.text
    assert "`r0`/`r1` trade places" in c.text
    assert "the order of the rungs changes 2 times. Over the last 3 epochs" in c.text


def test_rho_and_order_changes_read_as_words():
    assert claims.rho_span({1: -0.95, 2: -0.95, 3: -0.951}, 5) == "-0.95 at every epoch"
    assert claims.rho_span({1: -0.8, 2: float("nan"), 3: -0.9}, 5) == "between -0.90 and -0.80, -0.90 at the last"
    assert claims.rho_span({1: float("nan")}, 5) == "undefined in every epoch (tied KL)"
    assert [claims.times(n, "changes") for n in (0, 1, 3)] == ["never changes", "changes once", "changes 3 times"]


def test_training_order_with_two_trend_rungs_says_why_it_has_no_rho():
    c = claims.training_order(table([30.0, 4.0]), history({"r0": [20, 25, 28, 30], "r1": [1, 2, 3, 4]}))
    assert all(pd.isna(rho) for rho in c.numbers["rho_per_epoch"])
    assert "is not computed (2 trend rungs: a rank correlation needs at least 3)" in c.text


def test_rungs_within_seed_spread_that_swap_are_ties_not_instability():
    results = table([30.0, 25.0, 2.1, 2.0])
    noisy = history({"r0": [20, 25, 28, 30], "r1": [15, 20, 23, 25], "r2": [1.0, 2.0, 1.9, 2.1],
                     "r3": [1.0, 1.9, 2.0, 2.0]})
    noisy.loc[noisy["rung"].isin(["r2", "r3"]), "valid_kl_nats"] += noisy["seed"] * 0.5  # wide seeds
    c = claims.training_order(results, noisy)
    assert c.numbers["stable_over_last_epochs"] is True and c.numbers["ties"] == [("r2", "r3")]
    assert "`r2`/`r3` swap within their intervals, a tie" in c.text and "NOT" not in c.text


def test_training_order_uses_only_the_epochs_every_run_reached():
    """With early stopping, runs end at different epochs; a mean over the runs still training
    would compare different seeds at different epochs, so only the shared epochs count."""
    results = table([30.0, 25.0, 9.0, 4.0])
    h = history({"r0": [20, 25, 28, 30, 31, 32], "r1": [15, 20, 23, 25, 26, 27],
                 "r2": [3, 6, 8, 9, 9, 9], "r3": [1, 2, 3, 4, 4, 4]})
    h = h[~((h["rung"] == "r3") & (h["seed"] == 1) & (h["epoch"] > 4))]  # stopped after epoch 4
    h.loc[(h["rung"] == "r1") & (h["epoch"] > 4), "valid_kl_nats"] = 40.0  # would swap r0/r1
    c = claims.training_order(results, h)
    assert len(c.numbers["rho_per_epoch"]) == 4
    assert "over epochs 1-4" in c.text and "every run of a trend rung reached" in c.text
    assert "they end between epoch 4 and 6" in c.text
    assert c.numbers["stable_over_last_epochs"] is True


def runs(best: dict[str, list[int]], trained: dict[str, list[int]], patience: int = 4) -> pd.DataFrame:
    return pd.DataFrame([{"rung": r, "seed": s, "best_epoch": b, "epochs_trained": trained[r][s],
                          "converged": trained[r][s] - b >= patience}
                         for r, bs in best.items() for s, b in enumerate(bs)])


def test_convergence_names_every_run_the_cap_ended_and_only_those():
    results = table([30.0, 25.0, 9.0])
    done = runs({"r0": [20, 22], "r1": [10, 12], "r2": [30, 31]}, {"r0": [24, 26], "r1": [14, 16],
                                                                   "r2": [34, 35]})
    c = claims.convergence(done, results, patience=4, min_delta=0.1, cap=50)
    assert "6 of 6 runs met the stopping rule before the 50-epoch cap" in c.text
    assert "No run was stopped by the cap" in c.text and c.numbers["capped_runs"] == []
    assert c.numbers["best_epoch_mean"]["r0"] == 21.0
    capped = runs({"r0": [20, 49], "r1": [10, 12], "r2": [48, 50]}, {"r0": [24, 50], "r1": [14, 16],
                                                                    "r2": [50, 50]})
    c = claims.convergence(capped, results, patience=4, min_delta=0.1, cap=50)
    assert "3 of 6 runs met the stopping rule" in c.text
    assert "The cap ended every seed of `r2`; seed 1 of `r0`: their" in c.text and "No run" not in c.text
    assert len(c.text.split()) <= 60
    many = runs({f"r{i}": [50, 50] for i in range(7)}, {f"r{i}": [50, 50] for i in range(7)})
    c = claims.convergence(many, table([30.0 - i for i in range(7)]), patience=4, min_delta=0.1, cap=50)
    assert "The cap ended 14 runs of 7 rungs:" in c.text and len(c.text.split()) <= 60
    assert claims.convergence(done, results, patience=None, min_delta=0.0, cap=50) is None


@pytest.mark.parametrize("gap, std, n, word", [
    (0.1, 0.2, 3, zadds.TIE),      # the paired interval contains 0
    (3.0, 0.2, 3, zadds.WORSE),    # the VAE's ELBO is above the decoder alone's log p(x)
    (-1.5, 0.2, 3, zadds.BETTER),  # ignoring z is the better ELBO
    (-0.4, 0.2, 3, zadds.TIE),     # two seed std would decide; the 95 % interval does not
    (-1.5, NAN, 1, zadds.TIE),     # one seed pair: no interval, no decision
])
def test_collapse_is_the_better_elbo_only_where_the_paired_interval_excludes_zero(gap, std, n, word):
    assert zadds.collapse_word(stats.Interval.of(gap, std, n)) == word


def z_table(results: pd.DataFrame, elbo_gaps: list[float], std: float = 0.1) -> pd.DataFrame:
    """z_adds rows for every trend rung of `results`: twin t<i> of every rung, gap as given."""
    rows = []
    for r, gap in zip(claims.trend_rungs(results).itertuples(), elbo_gaps):
        rows.append({"rung": r.rung, "twin": f"t{r.rung}", "n_seed_pairs": 3, "n_images": 500,
                     "nll_alone_nats": 90.0, "nll_alone_std": 0.1, "nll_alone_se": 0.0,
                     "z_adds_iw_nats": gap + 1.0, "z_adds_iw_std": std, "z_adds_iw_se": 0.05,
                     "z_adds_elbo_nats": gap, "z_adds_elbo_std": std, "z_adds_elbo_se": 0.05,
                     "collapse": zadds.collapse_word(stats.Interval.of(gap, std, 3))})
    return pd.DataFrame(rows)


def test_the_collapse_optimum_groups_rungs_by_their_paired_interval_and_reads_the_top():
    results = table([20.0, 25.0, 9.0, 3.0, 2.0, 1.8], std=[0.2] * 6)
    everywhere = claims_of_z(results, [30.0, 40.0, 5.0, -0.8, -1.2, -2.0])
    assert everywhere.numbers["better"] == ["r3", "r4", "r5"] and everywhere.numbers["first_rung"] == "r3"
    assert "is the better ELBO at `r3`, `r4`, `r5`" in everywhere.text
    assert everywhere.numbers["top_verdict"] == claims.KEPT and everywhere.numbers["top_collapse"] == zadds.BETTER
    gap = claims_of_z(results, [30.0, 40.0, 5.0, -0.8, 0.05, -2.0])  # r4: unresolved
    assert gap.numbers["unresolved"] == ["r4"] and "it is unresolved at `r4`" in gap.text
    nowhere = claims_of_z(results, [30.0, 40.0, 5.0, 2.0, 1.0, 0.5])
    assert nowhere.numbers["first_rung"] is None and nowhere.numbers["better"] == []
    assert "the VAE's ELBO is better at `r0`, `r1`, `r2`, `r3`, `r4`, `r5`" in nowhere.text
    tied = claims_of_z(results, [30.0, 40.0, 5.0, 2.0, 1.0, 0.1])
    assert tied.numbers["unresolved"] == ["r5"] and tied.numbers["top_seeds_to_resolve"] == 7
    assert "by the ELBO (for the ELBO comparison, about 7 seeds would resolve it at this spread)" in tied.text
    collapsed = claims_of_z(table([20.0, 25.0, 9.0, 0.2], std=[0.2, 0.2, 0.2, 0.1]), [3.0, 3.0, 1.0, -1.0])
    assert collapsed.numbers["top_verdict"] == claims.COLLAPSED  # KL 0.20 [-0.05, 0.45] against 1 nat
    assert collapsed.numbers["top_kl"]["hi"] == pytest.approx(0.2 + 4.303 * 0.1 / 3**0.5, abs=1e-3)


def claims_of_z(results: pd.DataFrame, gaps: list[float]) -> claims.Claim:
    return zadds.collapse_optimum(z_table(results, gaps), results)


def test_what_z_adds_lists_every_trend_rung_and_side_rungs_never():
    results = table([20.0, 25.0, 9.0, 0.5, 2.0], roles=[claims.TREND] * 3 + [claims.COMPARISON, claims.TREND])
    c = zadds.what_z_adds(z_table(results, [30.0, 40.0, 5.0, -1.0]), results)
    assert [r["rung"] for r in c.numbers["rows"]] == ["r0", "r1", "r2", "r4"]
    assert "more likelihood with z at `r0`, `r1`, `r2`; unresolved at `r4`" in c.text
    assert c.numbers["spearman_rho_kl_z_adds"] == pytest.approx(1.0)  # 31, 41, 6, 0 against 20, 25, 9, 2


def test_the_answer_says_where_kl_falls_whether_it_plateaus_and_what_the_top_keeps():
    results = table([20.0, 25.0, 9.0, 2.2, 1.9], std=[0.3, 0.9, 0.5, 0.6, 0.2])
    found = [claims.power_trend(results, per_seed(results)),
             claims_of_z(results, [30.0, 40.0, 5.0, 0.5, -0.5])]
    found[1] = zadds.collapse_optimum(z_table(results, [30.0, 40.0, 5.0, 0.5, -0.5], std=1.2), results)
    answer = abstract.abstract(found, results, 1.0)
    assert answer[0].startswith("KL falls from 20.0-25.0 nats on `r0` and `r1` to 2.20 [")
    assert "then stays flat up to `r4` (1.90 [1.40, 2.40] nats): a plateau at the top" in answer[0]
    assert "it is unresolved at `r3` and `r4`" in answer[1]
    assert "`r4` keeps 1.90 [1.40, 2.40] nats of KL (above the 1-nat collapse threshold)" in answer[2]
    assert "no decided likelihood over its decoder alone" in answer[2]
    assert "cannot tell the objective's optimum (Chen et al. 2017) from" in answer[-1]
    assert all(len(sentence.split()) <= 60 for sentence in answer)


def test_k_convergence_names_the_rungs_where_the_estimate_rises():
    curves = pd.DataFrame({"rung": ["a"] * 3 + ["b"] * 3, "k": [1, 10, 100] * 2,
                           "nll_iw_nats": [90, 89, 88.5, 80, 80.2, 79.9]})
    c = claims.k_convergence(curves, ["a", "b"])
    assert c.numbers["rising"] == ["b"] and "by more than 0.01 nats somewhere on `b`" in c.text
    fine = curves.assign(nll_iw_nats=[90, 89, 88.5, 80, 80.005, 79.9])  # a rise below the tolerance
    c = claims.k_convergence(fine, ["a", "b"])
    assert "does not rise with K by more than 0.01 nats on any rung" in c.text and "most on `a`" in c.text
    exact = curves.assign(nll_iw_nats=[90, 89, 88.5, 80, 80.000001, 80.000001])  # no z: constant
    assert "between 0.00 and 1.50 nats" in claims.k_convergence(exact, ["a", "b"]).text


def test_mi_estimates_near_their_cap_are_named_lower_bounds_and_the_cap_names_its_m():
    results = table([30.0, 25.0, 9.0, 0.5])  # mi = min(kl, 9) against a cap of 9.2
    c = claims.mutual_information(results)
    assert c.numbers["lower_bounds"] == ["r0", "r1", "r2"] and "lower bound" in c.text
    # the cap says which M it is, so it is not read as another claim's (the grid's validation MI)
    named = claims.mutual_information(results.assign(mi_cap_nats=math.log(10_500))).text
    assert "M = 10,500 posteriors" in named and "log M = 9.26 nats" in named
    far = results.assign(mi_cap_nats=20.0)
    assert "every estimate is more than 0.5 nats below it" in claims.mutual_information(far).text


def test_the_bound_gap_steps_are_decided_at_95_percent_and_equal_fields_are_a_tie():
    assert "shrinks at every step" in claims.bound_gap(table([30, 20, 9, 4])).text
    tie = table([30, 20, 9, 4], gaps=[5.0, 10.0, 3.0, 2.0])  # r0/r1 share receptive field 0
    assert "shrinks at every step" in claims.bound_gap(tie).text
    bumpy = claims.bound_gap(table([30, 20, 9, 4], gaps=[5.0, 5.0, 3.0, 4.0]))
    assert "shrinks at `r0`/`r1` -> `r2`; it grows at `r2` -> `r3`" in bumpy.text
    assert bumpy.numbers["step_words"] == ["falls", "rises"]
    within_seeds = claims.bound_gap(table([30, 20, 9, 4], gaps=[5.0, 5.0, 3.0, 2.9]))
    assert "is flat at `r2` -> `r3`" in within_seeds.text  # 0.1 nats apart at std 0.1 over 3 seeds


def test_numbers_are_shown_with_their_spread_and_never_as_negative_zero():
    assert claims.pm(2.164, 0.257) == "2.16 ± 0.26" and claims.pm(2.164, NAN) == "2.16"
    assert claims.pm(-0.0004, 0.0001) == "0.00 ± 0.00"


def test_claims_serialise_to_plain_json():
    c = claims.Claim("x", "t", {"a": NAN, "b": pd.Series([1.5]).iloc[0], "c": [True, NAN]})
    assert json.loads(json.dumps(c.plain())) == {"text": "t", "numbers": {"a": None, "b": 1.5,
                                                                          "c": [True, None]}}


@pytest.mark.parametrize("floor, where", [(0.084, "within"), (0.05, "beyond"), (0.13, "beyond")])
def test_the_probe_floor_is_called_sampling_error_only_within_its_95_percent_band(floor, where):
    results = table([20.0, 15.0, 5.0], roles=[claims.TREND, claims.TREND, claims.NO_Z]).assign(n_test=500)
    results.loc[results["role"] == claims.NO_Z, "probe_accuracy"] = floor
    text = claims.probe(results).text  # at chance (10 %) on 500 images: ±2.6 points
    side = "below" if floor < claims.CHANCE else "above"
    gap = abs(100 * (floor - claims.CHANCE))
    assert f"{gap:.1f} points {side} chance (10%): {where} sampling error" in text
    assert "±2.6 points" in text


def test_the_answer_names_a_decided_rise_on_the_way_down():
    bumpy = table([30.0, 25.0, 9.0, 12.0, 0.5])
    trend = claims.power_trend(bumpy, per_seed(bumpy)).numbers
    sentence = abstract.trend_sentence(bumpy, trend)
    assert sentence.startswith("KL falls from 25.0-30.0 nats on `r0` and `r1` to 0.50")
    assert "rising on the way at `r2` -> `r3`" in sentence
    falling = table([30.0, 25.0, 9.0, 4.0, 0.5])
    trend = claims.power_trend(falling, per_seed(falling)).numbers
    assert "rising" not in abstract.trend_sentence(falling, trend)
