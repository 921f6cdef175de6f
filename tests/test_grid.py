"""A grid study (power x objective): its params expand into runs, its pipeline lists them, and
its report renders heatmaps and claims computed from known numbers."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import TINY_PARAMS, dvc, sh
from test_report import LADDER, make_project, params_dict, write_run

from stages import report
from stages.errors import ParamsError
from stages.layout import Layout
from stages.params import parse_params
from stages.report import abstract, grid
from stages.report.claims import Claim
from stages.studies import check_grid_pipeline, write_pipeline

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = {"elbo": {}, "beta": {"beta": 0.8}, "aggressive": {"aggressive": True}}


def grid_project(root: Path) -> tuple:
    """mlp and pixelcnn_2 under three objectives, pixelcnn_uncond (pixelcnn_2's twin) once, two
    seeds: `beta` keeps 3 nats more KL than the ELBO at every power for 0.5 nats of NLL_IW;
    `aggressive` changes nothing beyond noise."""
    raw = params_dict(seeds=(0, 1), rungs=("mlp", "pixelcnn_2", "pixelcnn_uncond"))
    raw["decoders"]["pixelcnn_uncond"] = {**raw["decoders"]["pixelcnn_2"], "conditional": False}
    raw["objectives"] = OBJECTIVES
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    layout = Layout(root)
    make_project(root, seeds=(0, 1), rungs=("mlp",))  # the summary and reference files
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copy(REPO / "reference/remedies.csv", layout.remedies)
    for run, cell in params.cells.items():
        base = "pixelcnn_uncond" if run == "pixelcnn_uncond" else cell.rung
        entry, numbers = LADDER[base]
        for s in (0, 1):
            v = dict(numbers)
            v["kl"] += 0.05 * s
            if cell.objective == "beta":
                v.update(kl=v["kl"] + 3.0, rec=v["rec"] - 2.5, nll=v["nll"] + 0.5, mi=v["mi"] + 1.0)
            extra = None
            if cell.objective == "aggressive":
                v.update(kl=v["kl"] + 0.01)
                # mlp: on for all 3 epochs, every inner loop at the cap (100), its MI at the cap
                # log 10,000 of the valid images scored; pixelcnn_2: on for 2 epochs
                mlp = cell.rung == "mlp"
                extra = {"aggressive": [1.0, 1.0, 1.0 if mlp else 0.0],
                         "inner_steps_per_step": [100.0] * 3 if mlp else [40.0, 20.0, 0.0],
                         "valid_mi_nats": [8.9, 9.19, 9.2] if mlp else [1.0, 2.0, 1.5]}
            write_run(layout, run, s, v, entry["family"], extra)
    return params, layout


def test_the_grid_report_shows_each_objective_against_the_elbo_at_each_power(tmp_path):
    params, layout = grid_project(tmp_path)
    report.run(params, layout)
    found = json.loads((layout.reports / "claims.json").read_text())
    objectives = found["grid_objectives"]
    assert objectives["numbers"]["beta"]["more_kl_at"] == ["mlp", "pixelcnn_2"]
    assert objectives["numbers"]["aggressive"]["more_kl_at"] == []
    assert "more information in z: `beta` at `mlp`, `pixelcnn_2`; less: none" in objectives["text"]
    assert found["grid_likelihood"]["numbers"]["worse_at"] == {"beta": ["mlp", "pixelcnn_2"]}
    phase = found["grid_aggressive_phase"]
    assert phase["numbers"]["aggressive"]["phase_epochs"] == {"mlp": 3.0, "pixelcnn_2": 2.0}
    assert phase["numbers"]["aggressive"]["capped_at"] == ["mlp"]
    assert phase["numbers"]["aggressive"]["mi_at_cap_at"] == ["mlp"]
    assert "every inner loop hit the cap at `mlp`, so the encoder may" in phase["text"]
    assert "at `mlp` the phase never ended, its validation MI within 0.05 nats" in phase["text"]
    assert "cap log M = 9.21 (M = 10,000 validation posteriors)" in phase["text"]
    top = found["grid_top_against_alone"]
    assert top["numbers"]["rung"] == "pixelcnn_2" and top["numbers"]["better"] == []
    assert top["numbers"]["words"] == {"elbo": "worse", "beta": "worse", "aggressive": "worse"}
    assert "no objective gives a better NLL_IW than the decoder alone (`pixelcnn_uncond`, 88.00 nats" in top["text"]
    assert list(found)[:6] == ["abstract", "collapse_optimum", "grid_objectives", "grid_likelihood",
                               "grid_aggressive_phase", "grid_top_against_alone"]
    # every finding reads in one breath: its numbers are in the tables
    assert {k: n for k, c in found.items() if k != "abstract" and (n := len(c["text"].split())) > 60} == {}
    assert "Of the remedies at `pixelcnn_2`, `beta` keeps more information in z" in found["abstract"]["text"]
    md = (layout.reports / "report.md").read_text()
    assert "## The grid: power x objective" in md and "He et al., OMNIGLOT" in md
    assert "| `pixelcnn_2` | `beta` | 3.12 [2.81, 3.44] |" in md  # the cells, with 95 % intervals
    assert "| `aggressive` | `mlp` | 3 of 3 | 100.0 (cap 100) | 9.20 (cap 9.21) |" in md
    top_rows = md[md.index("## At the top"):md.index("## What the numbers show")]
    assert all(f"`pixelcnn_2__{o}`" in top_rows for o in OBJECTIVES) and "`mlp__elbo`" not in top_rows
    assert (layout.reports / "figures/grid_heatmaps.png").exists()
    results = pd.read_csv(layout.reports / "results.csv").set_index("rung")
    assert results.loc["mlp__beta", "role"] == "mitigated" and results.loc["mlp__elbo", "role"] == "trend"
    assert tuple(results.loc["mlp__beta", ["decoder", "objective"]]) == ("mlp", "beta")  # tidy: no splitting


def test_an_objective_that_keeps_less_is_named_and_one_seed_never_counts(tmp_path):
    def cell(objective, kl, std, change, lo, hi):
        return {"rung": "a", "objective": objective, "power": 0, "kl_nats": kl, "kl_nats_std": std,
                "kl_change_nats": change, "kl_change_lo": lo, "kl_change_hi": hi,
                "nll_change_nats": 0.0, "nll_change_std": 0.1, "nll_change_se": 0.05,
                "nll_change_lo": -0.2, "nll_change_hi": 0.2, "kl_floor_nats": 0.0}
    cells = pd.DataFrame([cell("elbo", 5.0, 0.1, 0.0, 0.0, 0.0), cell("warm", 3.0, 0.1, -2.0, -2.3, -1.7),
                          cell("one", 9.0, math.nan, 4.0, math.nan, math.nan)])
    claim = grid.objectives_claim(cells)
    assert (claim.numbers["warm"]["more_kl_at"], claim.numbers["warm"]["less_kl_at"]) == ([], ["a"])
    assert claim.numbers["one"]["more_kl_at"] == []  # no spread: no verdict
    assert "more information in z: none; less: `warm` at `a`; elsewhere unresolved" in claim.text


def test_the_grid_pipeline_has_one_stage_per_run_and_seed_and_refuses_to_go_stale(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    raw = copy.deepcopy(TINY_PARAMS)
    raw["decoders"]["pixelcnn_2_alone"] = {**raw["decoders"]["pixelcnn_2"], "conditional": False}
    raw["objectives"] = {"elbo": {}, "beta": {"beta": 0.5}}
    profile = tmp_path / "profiles/g"
    profile.mkdir(parents=True)
    (profile / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_pipeline(tmp_path, "g")
    stages = yaml.safe_load((profile / "dvc.yaml").read_text())["stages"]
    runs = stages["train"]["foreach"]
    assert list(runs) == ["linear__elbo-0", "linear__beta-0", "pixelcnn_2__elbo-0", "pixelcnn_2__beta-0",
                          "pixelcnn_2_alone-0"]
    assert runs["pixelcnn_2__beta-0"] == {"run": "pixelcnn_2__beta", "rung": "pixelcnn_2", "objective": "beta",
                                          "seed": 0}
    train = stages["train"]["do"]
    assert "vae-study train ${item.run} --seed ${item.seed} --params profiles/g/params.yaml --study g" in train["cmd"]
    assert train["params"] == [{"profiles/g/params.yaml": ["decoders.${item.rung}", "objectives.${item.objective}",
                                                           "encoder", "train"]}]
    assert train["outs"] == ["data/g/models/${item.run}/seed${item.seed}.pt"]
    assert "objectives" in stages["report"]["params"][0]["profiles/g/params.yaml"]
    assert "reports/results.csv" not in stages["report"]["deps"] and "--compare-with" not in stages["report"]["cmd"]
    sh(tmp_path, "git", "init", "-q")
    dvc(tmp_path, "init", "-q")
    listed = dvc(tmp_path, "stage", "list", "profiles/g/dvc.yaml").stdout  # DVC expands it as written
    assert "train@pixelcnn_2__beta-0" in listed and "evaluate@pixelcnn_2_alone-0" in listed
    check_grid_pipeline(tmp_path, "g", parse_params(raw))  # in step: no complaint

    raw["objectives"]["free"] = {"free_bits": 0.5}  # an objective added, the pipeline not regenerated
    with pytest.raises(ParamsError, match=r"out of step with profiles/g/params.yaml or dvc.yaml \(runs the params make but "
                                          r"it lacks: linear__free-0, pixelcnn_2__free-0\): run `vae-study "
                                          r"study-pipeline g`"):
        check_grid_pipeline(tmp_path, "g", parse_params(raw))


def test_the_committed_grid_is_both_ends_of_the_power_axis_by_five_objectives_at_three_seeds_in_step():
    from stages.params import load_params

    grid, default = load_params(REPO / "profiles/grid/params.yaml"), load_params(REPO / "params.yaml")
    check_grid_pipeline(REPO, "grid", grid)  # `vae-study study-pipeline grid` was rerun after the last edit
    rungs = {cell.rung for cell in grid.cells.values()}
    with_z = {r for r in rungs if getattr(grid.decoders.get(f"{r}__elbo", grid.decoders.get(r)).decoder,
                                          "conditional", True)}
    assert len(with_z) >= 2 and len(grid.objectives) >= 5 and len(grid.seeds) >= 3
    assert "mlp" in with_z  # the factorized end
    assert {o.beta < 1 for o in grid.objectives.values()} == {True, False}
    assert any(o.aggressive for o in grid.objectives.values()) and any(o.free_bits for o in grid.objectives.values())
    assert any(o.kl_warmup_steps for o in grid.objectives.values())
    top = max(default.decoders, key=lambda r: default.decoders[r].family == "gated_pixelcnn"
              and getattr(default.decoders[r].decoder, "conditional", True))
    assert top in with_z  # the top rung of the power axis is a row of the grid
    for r in with_z - {"mlp"}:
        assert f"{r}_alone" in grid.decoders, r  # every autoregressive power has its decoder alone
    assert (grid.binarize, grid.encoder, grid.train, grid.evaluate) == \
        (default.binarize, default.encoder, default.train, default.evaluate)


def test_an_mi_at_its_estimators_cap_is_compared_only_where_it_is_the_higher_one():
    def cell(objective, kl, mi, mi_change):
        return {"rung": "a", "objective": objective, "power": 0, "kl_nats": kl, "kl_nats_std": 0.1,
                "kl_change_nats": kl - 5.0, "kl_change_lo": kl - 5.3, "kl_change_hi": kl - 4.7,
                "mi_nats": mi, "mi_nats_std": 0.01, "mi_change_nats": mi_change,
                "mi_change_lo": mi_change - 0.03, "mi_change_hi": mi_change + 0.03, "mi_cap_nats": 9.26,
                "kl_floor_nats": 8.0,
                "nll_change_nats": 0.0, "nll_change_std": 0.1, "nll_change_se": 0.05,
                "nll_change_lo": -0.2, "nll_change_hi": 0.2}
    below = pd.DataFrame([cell("elbo", 5.0, 8.0, 0.0), cell("up", 8.0, 9.0, 1.0), cell("down", 8.0, 7.0, -1.0)])
    claim = grid.objectives_claim(below)
    assert claim.numbers["up"]["more_kl_at"] == ["a"]  # at its cap but the higher one: still more
    assert claim.numbers["down"]["less_kl_at"] == ["a"]
    at_cap = pd.DataFrame([cell("elbo", 5.0, 9.0, 0.0), cell("down", 8.0, 8.0, -1.0)])
    claim = grid.objectives_claim(at_cap)
    assert claim.numbers["down"]["capped_at"] == ["a"] and claim.numbers["down"]["less_kl_at"] == []
    assert "not compared, MI at the estimator's cap: `down` at `a`" in claim.text


def test_free_bits_are_judged_by_mi_because_their_kl_is_floored_by_construction():
    def cell(objective, kl, change, mi_lo, mi_hi, floor):
        return {"rung": "a", "objective": objective, "power": 0, "kl_nats": kl, "kl_nats_std": 0.1,
                "kl_change_nats": change, "kl_change_lo": change - 0.2, "kl_change_hi": change + 0.2,
                "mi_nats": 3.0, "mi_nats_std": 0.1, "mi_change_nats": (mi_lo + mi_hi) / 2,
                "mi_change_lo": mi_lo, "mi_change_hi": mi_hi, "mi_cap_nats": 9.26, "kl_floor_nats": floor,
                "nll_change_nats": 0.0, "nll_change_std": 0.1, "nll_change_se": 0.05,
                "nll_change_lo": -0.2, "nll_change_hi": 0.2}
    cells = pd.DataFrame([cell("elbo", 2.0, 0.0, 0.0, 0.0, 0.0), cell("free", 8.0, 6.0, -0.3, 0.2, 8.0),
                          cell("beta", 5.0, 3.0, -0.3, 0.2, 0.0)])
    claim = grid.objectives_claim(cells)
    assert claim.numbers["free"] == {"more_kl_at": [], "less_kl_at": [], "capped_at": [], "judged_by": "mi",
                                     "kl_floor_nats": 8.0}
    assert claim.numbers["beta"]["more_kl_at"] == ["a"]  # no floor: its KL is information it chose
    assert "by MI for `free`, whose KL free bits floor" in claim.text
    # the answer says "information", judged as the claim judges it, never "KL" for a floored rate
    top = Claim("grid_top_against_alone", "", {"rung": "a", "better": [], "words": {}})
    sentence = abstract.remedies_sentence({"grid_objectives": claim, "grid_top_against_alone": top})
    assert sentence.startswith("Of the remedies at `a`, `beta` keeps more information in z than the ELBO "
                               "(Welch 95 %, by KL; by MI for `free`, whose KL free bits floor)")
    assert "KL than" not in sentence


def test_the_aggressive_phase_table_rounds_mean_epochs_over_seeds():
    cells = pd.DataFrame([{"objective": "aggressive", "rung": "gated_5", "phase_epochs": 10 / 3,
                           "phase_of_epochs": 5.0, "inner_steps": 5.0, "inner_cap": 6.0,
                           "valid_mi_last_nats": 2.49, "valid_mi_cap_nats": 6.91}])
    _, rows, _ = grid.phase_table(cells)
    assert rows == [["`aggressive`", "`gated_5`", "3.33 of 5", "5.0 (cap 6)", "2.49 (cap 6.91)"]]


def test_a_kl_that_free_bits_floor_is_not_information_the_verdict_reads_the_mi(tmp_path):
    """Free bits hold the KL near latent_dim x lambda whatever z carries: a free-bits cell whose
    MI is near 0 has collapsed, though its KL of 8 nats would call it 'kept'."""
    raw = params_dict(seeds=(0, 1, 2), rungs=("mlp",))
    raw["objectives"] = {"elbo": {}, "free": {"free_bits": 0.5}}
    params, layout = parse_params(raw), Layout(tmp_path)
    make_project(tmp_path, seeds=(0, 1, 2), rungs=("mlp",))  # the summary and reference files
    shutil.copy(REPO / "reference/remedies.csv", layout.remedies)
    for run, cell in params.cells.items():
        for s in (0, 1, 2):
            v = dict(LADDER["mlp"][1], kl=LADDER["mlp"][1]["kl"] + 0.05 * s)
            if cell.objective == "free":
                v.update(kl=8.0 + 0.05 * s, mi=0.2 + 0.05 * s)
            write_run(layout, run, s, v, "mlp")
    report.run(params, layout)
    results = pd.read_csv(layout.reports / "results.csv").set_index("rung")
    assert tuple(results.loc["mlp__free", ["verdict_by", "verdict"]]) == ("mi", "collapsed")
    assert tuple(results.loc["mlp__elbo", ["verdict_by", "verdict"]]) == ("kl", "not collapsed")
    text = json.loads((layout.reports / "claims.json").read_text())["verdicts"]["text"]
    assert "(MI for `mlp__free`, whose KL free bits floor)" in text and "collapsed: `mlp__free`" in text
    assert "of MI where free bits floor the KL" in (layout.reports / "report.md").read_text()
