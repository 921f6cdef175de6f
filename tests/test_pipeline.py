"""The DVC pipeline end to end on a tiny study: partial reruns, shared cache, sweeps.

Every test runs real `dvc` commands on a real git + DVC project in a temp folder, with the
repo's own dvc.yaml and stage code, tiny models and synthetic data.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import (
    REPO,
    TINY_PARAMS,
    built_study,
    downstream,
    dvc,
    env_with_venv,
    private_copy,
    ran_stages,
    sh,
    stage_status,
    stale_code,
)

from stages import gather
from stages.errors import ParamsError
from stages.layout import Layout
from stages.live import read_history
from stages.params import load_params
from stages.studies import pipeline, study_path, write_pipeline

pytestmark = pytest.mark.slow

PARAMS = copy.deepcopy(TINY_PARAMS)
PARAMS["seeds"] = [0, 1]
RUNGS = list(PARAMS["decoders"])
TRAIN = {f"train@{r}-{s}" for r in RUNGS for s in PARAMS["seeds"]}
EVALUATE = {f"evaluate@{r}-{s}" for r in RUNGS for s in PARAMS["seeds"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny study after one full `dvc repro`, committed."""
    root, out = built_study(tmp_path_factory.mktemp("built") / "study", PARAMS)
    assert set(ran_stages(out)) == {"validate", "binarize", *TRAIN, *EVALUATE, "gather", "report"}
    return root


@pytest.fixture
def study(built, tmp_path) -> Path:
    """A private copy of the built study (git history and DVC cache included)."""
    return private_copy(built, tmp_path)


def edit_params(root: Path, change) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    change(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def metrics(root: Path) -> dict[str, dict]:
    return {str(p.relative_to(root)): json.loads(p.read_text())
            for p in sorted((root / "data/metrics").rglob("*.json"))}


def without_seconds(all_metrics: dict[str, dict]) -> dict[str, dict]:
    return {k: {m: v for m, v in d.items() if m != "seconds"} for k, d in all_metrics.items()}


def test_repro_builds_every_output_and_a_second_repro_has_nothing_to_do(built):
    layout, params = Layout(built), load_params(built / "params.yaml")
    for rung in params.decoders:
        for seed in params.seeds:
            assert layout.model(rung, seed).exists() and layout.metrics(rung, seed).exists()
            assert (layout.eval_dir(rung, seed) / "k_curve.csv").exists()
    assert (built / "reports/index.html").exists() and (built / "reports/results.csv").exists()
    assert not (built / ".scratch/train").exists() or not any((built / ".scratch/train").iterdir())
    second = dvc(built, "repro").stdout
    assert ran_stages(second) == [] and "up to date" in second
    assert stage_status(built) == set()


def test_dvc_yaml_writes_where_the_code_expects(built):
    """dvc.yaml and stages/layout.py name the same paths."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    layout = Layout(Path("."))
    item = {"${item.decoder}": "RUNG", "${item.seed}": "7"}

    def expand(path: str) -> str:
        for k, v in item.items():
            path = path.replace(k, v)
        return path

    train_outs = [expand(o) for o in stages["train"]["outs"]]
    assert train_outs == [str(layout.model("RUNG", 7))]
    assert [expand(next(iter(p))) for p in stages["train"]["plots"]] == [str(layout.history_plots("RUNG", 7))]
    assert [expand(m) for m in stages["train"]["metrics"]] == [str(layout.history_metrics("RUNG", 7))]
    assert [expand(o) for o in stages["evaluate"]["outs"]] == [str(layout.eval_dir("RUNG", 7))]
    assert [expand(m) for m in stages["evaluate"]["metrics"]] == [str(layout.metrics("RUNG", 7))]
    assert stages["binarize"]["outs"] == [str(layout.binarized)]
    assert stages["validate"]["outs"] == [str(layout.params_stamp)]
    assert str(layout.params_stamp) in stages["binarize"]["deps"]  # upstream of every params reader
    # gather copies exactly what it depends on; the report reads only its copy, which git tracks
    assert [d for d in stages["gather"]["deps"] if not d.startswith("stages/")] == list(
        map(str, gather.sources(layout)))
    assert stages["gather"]["outs"] == [{str(gather.gathered(layout).data): {"cache": False}}]
    assert str(gather.gathered(layout).data) in stages["report"]["deps"]
    assert not any(d.startswith("data/") for d in stages["report"]["deps"])


def test_the_modules_that_define_defaults_are_deps_of_the_stages_that_use_them():
    """Per-rung defaults live in stages/params.py (objective) and stages/model (architectures):
    editing them must rerun what they shape."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("train", "evaluate", "report"):
        assert {"stages/params.py", "stages/model"} <= set(stages[name]["deps"]), name


def test_editing_one_decoder_reruns_exactly_its_stages_and_the_report(study):
    edit_params(study, lambda p: p["decoders"]["pixelcnn_2"].update(channels=6))
    marked = stage_status(study) - {"validate"}  # which reruns on every edit, changing no output
    expected = {"train@pixelcnn_2-0", "train@pixelcnn_2-1", "evaluate@pixelcnn_2-0",
                "evaluate@pixelcnn_2-1", "report"}
    assert marked == expected
    assert downstream(study, marked) == expected | {"gather"}  # gather reruns once evaluation has


def test_editing_evaluation_keys_reruns_only_evaluation_and_the_report(study):
    edit_params(study, lambda p: p["evaluate"].update(k=16))
    marked = stage_status(study) - {"validate"}
    assert marked == EVALUATE
    assert downstream(study, marked) == EVALUATE | {"gather", "report"}


def test_editing_binarization_reruns_everything_downstream(study):
    edit_params(study, lambda p: p["binarize"].update(seed=3))
    marked = stage_status(study) - {"validate"}
    assert marked == {"binarize"}
    assert downstream(study, marked) == {"binarize", *TRAIN, *EVALUATE, "gather", "report"}


def test_adding_a_decoder_adds_its_stages_and_reruns_only_the_report(study):
    edit_params(study, lambda p: p["decoders"].update(mlp={"family": "mlp", "hidden": [16]}))
    new = {"train@mlp-0", "train@mlp-1", "evaluate@mlp-0", "evaluate@mlp-1"}
    assert stage_status(study) == new | {"validate", "report"}
    out = dvc(study, "repro").stdout
    assert set(ran_stages(out)) == new | {"validate", "gather", "report"}
    assert "mlp" in (study / "reports/results.csv").read_text()


def test_force_rerun_gives_identical_metrics(study):
    before = metrics(study)
    out = dvc(study, "repro", "--force").stdout
    assert "report" in ran_stages(out)
    after = metrics(study)
    assert without_seconds(after) == without_seconds(before)
    assert before.keys() == after.keys() and len(before) == len(RUNGS) * 2


def test_the_report_shows_mean_and_spread_over_seeds(built):
    results = pd.read_csv(built / "reports/results.csv")
    assert list(results["rung"]) == RUNGS
    seeds = [json.loads((built / f"data/metrics/linear/seed{s}.json").read_text())["kl_nats"]
             for s in (0, 1)]
    row = results.set_index("rung").loc["linear"]
    assert row["kl_nats"] == pytest.approx(sum(seeds) / 2, rel=1e-6)
    assert row["n_seeds"] == 2 and row["kl_nats_std"] > 0


def test_a_collaborator_pulls_instead_of_recomputing(study, tmp_path):
    """Push outputs and run-cache to a shared remote; fresh clones reproduce nothing."""
    remote = tmp_path / "remote"
    dvc(study, "remote", "add", "-d", "shared", str(remote))
    sh(study, "git", "commit", "-q", "-am", "shared remote")
    dvc(study, "push", "--run-cache")

    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(study), str(clone))
    dvc(clone, "pull")
    out = dvc(clone, "repro").stdout
    assert ran_stages(out) == [] and "up to date" in out
    for path in ("reports/results.csv", "reports/index.html", "data/metrics/linear/seed0.json"):
        assert (clone / path).read_bytes() == (study / path).read_bytes(), path

    # A collaborator whose dvc.lock lacks the results (other machines ran those stages and
    # pushed the run-cache): every computing stage is restored from the run-cache; only gather
    # and the report run again (their outputs live in git; the run-cache carries cached outputs).
    other = tmp_path / "other"
    sh(tmp_path, "git", "clone", "-q", str(study), str(other))
    lock = yaml.safe_load((other / "dvc.lock").read_text())
    lock["stages"] = {"download": lock["stages"]["download"]}
    (other / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    out = dvc(other, "repro", "--pull").stdout
    assert ran_stages(out) == ["gather", "report"]
    assert out.count("is cached - skipping run") == len(TRAIN | EVALUATE) + 2  # + validate, binarize
    assert metrics(other) == metrics(study)
    assert (other / "reports/results.csv").read_bytes() == (study / "reports/results.csv").read_bytes()


def test_a_report_code_change_renders_again_from_git_alone_on_a_fresh_clone(study, tmp_path):
    """The report reads only reports/inputs, which git tracks (the gather stage's copy): on a
    clone with no data and no DVC cache, a change to the report's code stales the report alone,
    `dvc repro -s report` renders it again in seconds, and its lock then records the new code."""
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(study), str(clone))
    assert not (clone / "data/metrics").exists() and (clone / "reports/inputs/metrics").is_dir()
    page = clone / "stages/report/page.py"
    page.write_text(page.read_text() + "\n# a report-code change\n")
    assert stale_code(clone) == {"report": ["stages/report"]}
    assert ran_stages(dvc(clone, "repro", "-s", "report").stdout) == ["report"]
    assert stale_code(clone) == {}
    assert (clone / "reports/results.csv").read_bytes() == (study / "reports/results.csv").read_bytes()


def test_the_stale_code_check_names_each_stage_whose_lock_records_other_code_or_params(study):
    shutil.rmtree(study / "data/models")  # missing data is not stale code
    assert stale_code(study) == {}
    evaluate = study / "stages/evaluate.py"
    evaluate.write_text(evaluate.read_text() + "\n# changed\n")
    edit_params(study, lambda p: p["report"].update(collapse_threshold_nats=0.5))
    stale = stale_code(study)
    assert set(stale) == {"validate", *EVALUATE, "report"}, stale  # validate reads the whole file
    assert stale["validate"] == ["params.yaml (modified)"]
    assert stale["evaluate@linear-0"] == ["stages/evaluate.py"]
    assert stale["report"] == ["params.yaml ({'report': 'modified'})"]  # DVC names the key the stage lists


def test_a_queued_sweep_runs_in_parallel_and_compares_in_exp_show(study):
    edit_params(study, lambda p: p.update(seeds=[0]))  # one seed keeps the sweep short
    dvc(study, "repro", "report")
    sh(study, "git", "commit", "-q", "-am", "one seed")
    for n_layers in (1, 3):
        dvc(study, "exp", "run", "--queue", "-S", f"decoders.pixelcnn_2.n_layers={n_layers}")
    # The workers are daemons: give them no pipe of ours to hold open.
    subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", "2"], cwd=study,
                   env=env_with_venv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120, check=True)

    deadline = time.time() + 600
    while time.time() < deadline:
        status = dvc(study, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status
    shown = json.loads(dvc(study, "exp", "show", "--json").stdout)
    layers = set()
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev["data"]
                n = data["params"]["params.yaml"]["data"]["decoders"]["pixelcnn_2"]["n_layers"]
                layers.add(n)
                assert "data/metrics/pixelcnn_2/seed0.json" in data["metrics"]
    assert layers == {1, 3}
    dvc(study, "queue", "stop", check=False)


def test_dvc_metrics_and_plots_show_the_training_history_dvclive_wrote(built):
    metrics = json.loads(dvc(built, "metrics", "show", "--json").stdout)
    files = next(iter(metrics.values()))["data"]
    latest = files["data/history/linear/seed0/metrics.json"]["data"]
    assert latest["step"] == PARAMS["train"]["epochs"] and "valid_kl_nats" in latest
    plots = json.loads(dvc(built, "plots", "show", "--json").stdout)["data"]
    [kl_plot] = [v for k, v in plots.items() if k.endswith("linear/seed0/plots/metrics/valid_kl_nats.tsv")]
    values = kl_plot[0]["content"]["data"]["values"]  # the per-epoch curve DVC renders
    assert [int(v["step"]) for v in values] == list(range(1, PARAMS["train"]["epochs"] + 1))
    assert float(values[-1]["valid_kl_nats"]) == pytest.approx(latest["valid_kl_nats"])


def running_metrics(root: Path, path: str) -> list[dict]:
    """The metrics `dvc exp show` lists for running experiments (a queued run in its temp dir).

    While the queue is still creating or removing the run's temp workspace, `exp show` can fail
    with "directory '.dvc/tmp/exps/<tmp>/.dvc' does not exist" (DVC's race, seen under load):
    that poll shows nothing, any other failure is an error."""
    proc = dvc(root, "exp", "show", "--json", check=False)
    if proc.returncode != 0:
        assert ".dvc/tmp/exps/" in proc.stderr and "does not exist" in proc.stderr, proc.stderr
        return []
    shown = json.loads(proc.stdout)
    out = []
    for commit in shown:
        for exp in commit.get("experiments") or []:
            if (exp.get("executor") or {}).get("state") == "running":
                for rev in exp.get("revs", []):
                    data = (rev.get("data") or {}).get("metrics", {}).get(path, {}).get("data")
                    if data:
                        out.append(data)
    return out


def test_dvc_exp_show_lists_a_queued_runs_metrics_while_it_trains(study):
    epochs = 800  # tiny epochs: long enough for exp show to catch the run in the middle
    path = "data/history/linear/seed0/metrics.json"
    dvc(study, "exp", "run", "--queue", "-S", f"train.epochs={epochs}", "train@linear-0")
    subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", "1"], cwd=study,
                   env=env_with_venv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120, check=True)
    seen, deadline = [], time.time() + 300
    try:
        while time.time() < deadline:
            seen += [m["step"] for m in running_metrics(study, path)]
            if any(0 < s < epochs for s in seen):
                break
            status = dvc(study, "queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(0.5)
    finally:
        deadline = time.time() + 300
        while time.time() < deadline and any(
                w in dvc(study, "queue", "status").stdout for w in ("Queued", "Running")):
            time.sleep(2)
        dvc(study, "queue", "stop", check=False)
    assert any(0 < s < epochs for s in seen), f"exp show never showed the run mid-training: {seen}"
    assert "Success" in dvc(study, "queue", "status").stdout


def test_the_paper_profile_validates_and_expands_into_the_expected_stages(study):
    shutil.copy(REPO / "profiles/paper.yaml", study / "params.yaml")
    paper = load_params(study / "params.yaml")
    assert paper.evaluate.k == 5000 and paper.evaluate.n_test is None
    assert paper.binarize.train_subset is None and paper.binarize.valid_size == 10000
    assert all(r.decoder.gated for n, r in paper.decoders.items() if r.family == "pixelcnn")
    names = set(dvc(study, "stage", "list", "--name-only").stdout.split())
    expected = {"validate", "download", "binarize", "gather", "report"}
    expected |= {f"{stage}@{rung}-{seed}" for stage in ("train", "evaluate")
                 for rung in paper.decoders for seed in paper.seeds}
    assert names == expected


# --- a named study beside the default one (profiles/long/) -----------------------------------

def test_the_long_pipeline_is_the_default_one_with_its_own_params_and_folders():
    """profiles/long/dvc.yaml is derived from dvc.yaml: after editing dvc.yaml, rerun
    `vae-study study-pipeline long`."""
    default = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert yaml.safe_load((REPO / "profiles/long/dvc.yaml").read_text()) == pipeline(default, "long"), \
        "profiles/long/dvc.yaml is stale: run `vae-study study-pipeline long`"
    stages = pipeline(default, "long")["stages"]
    layout = Layout(Path("."), "long")
    assert [o.replace("${item.decoder}", "RUNG").replace("${item.seed}", "7")
            for o in stages["train"]["outs"]] == [str(layout.model("RUNG", 7))]
    assert stages["binarize"]["outs"] == [str(layout.binarized)]
    assert stages["report"]["outs"][0] == {str(layout.reports / "results.csv"): {"cache": False}}
    assert [d for d in stages["gather"]["deps"] if not d.startswith("stages/")] == list(
        map(str, gather.sources(layout)))
    assert study_path("data/raw/x", "long") == "data/raw/x"  # the download is shared
    # No stage reads another study's outputs: `dvc repro profiles/long/dvc.yaml` on a fresh clone
    # runs the long study alone, not the default one first.
    for name, stage in stages.items():
        foreign = [d for d in stage["deps"] if d.startswith(("data/", "reports/"))
                   and not d.startswith(("data/long/", "data/raw/", "reports/long/"))]
        assert not foreign, f"{name} depends on {foreign}"
    assert "--compare-with" not in stages["report"]["cmd"]


def test_a_study_needs_a_folder_name_and_its_params_file(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    with pytest.raises(ParamsError, match="profiles/x/params.yaml: not found"):
        write_pipeline(tmp_path, "x")
    for bad in ("Long", "../up", "models"):
        (tmp_path / "profiles" / bad).mkdir(parents=True, exist_ok=True)
        (tmp_path / "profiles" / bad / "params.yaml").write_text("{}")
        with pytest.raises(ParamsError, match=f"study name {bad!r}"):
            write_pipeline(tmp_path, bad)
    assert not list(tmp_path.glob("profiles/*/dvc.yaml"))


def test_the_long_profile_is_the_default_ladder_below_the_gated_rungs_early_stopped():
    default, long = load_params(REPO / "params.yaml"), load_params(REPO / "profiles/long/params.yaml")
    # the same rungs as the default ladder (their twins and side rung included), the gated ones
    # left out to fit 150 minutes on either CPU (docs/studies.md says what that costs)
    assert {n: r for n, r in default.decoders.items() if r.family != "gated_pixelcnn"} == long.decoders
    assert (long.binarize, long.encoder) == (default.binarize, default.encoder)
    assert long.train.patience is not None and long.train.patience < long.train.epochs
    assert len(long.seeds) >= 3  # a 95 % interval over 2 seeds is 12.7 standard errors wide
    assert (long.evaluate.k, long.evaluate.n_test) >= (default.evaluate.k, default.evaluate.n_test)


def test_no_named_study_takes_the_default_studys_gathered_copy():
    with pytest.raises(ParamsError, match="study name 'inputs' is taken"):
        pipeline({"stages": {}}, gather.FOLDER)


def test_a_named_study_reproduces_into_its_own_folders_leaving_the_default_untouched(study):
    """`dvc repro profiles/<study>/dvc.yaml` writes data/<study>/ and reports/<study>/ only; the
    default study's dvc.lock and reports/ keep their bytes, and a second repro does nothing."""
    long = copy.deepcopy(PARAMS)
    long["train"].update(epochs=6, patience=1, min_delta_nats=0.0)
    (study / "profiles/tiny").mkdir(parents=True)
    (study / "profiles/tiny/params.yaml").write_text(yaml.safe_dump(long, sort_keys=False))
    sh(study, "vae-study", "study-pipeline", "tiny")
    before = {p: (study / p).read_bytes() for p in ("dvc.lock", "reports/results.csv", "reports/report.md")}
    # Before the named study has run, the default pipeline reads clean (the README's check) while
    # plain `dvc status`, which covers every pipeline of the project, lists the named study's stages.
    assert json.loads(dvc(study, "status", "dvc.yaml", "--json").stdout or "{}") == {}
    assert any(s.startswith("profiles/tiny/dvc.yaml:") for s in stage_status(study))

    out = dvc(study, "repro", "profiles/tiny/dvc.yaml").stdout
    ran = set(ran_stages(out))
    assert ran == {f"profiles/tiny/dvc.yaml:{s}"
                   for s in ("validate", "binarize", *TRAIN, *EVALUATE, "gather", "report")}
    assert {p: (study / p).read_bytes() for p in before} == before
    layout = Layout(study, "tiny")
    assert all(layout.model(r, s).exists() for r in RUNGS for s in PARAMS["seeds"])
    report = (study / "reports/tiny/report.md").read_text()
    assert "## Against the baseline" not in report  # across studies is `vae-study answer`'s
    assert "### Convergence" in report and "A run stops once 1 epoch in a row has not raised" in report
    assert "runs met the stopping rule before the 6-epoch cap" in report
    results = pd.read_csv(study / "reports/tiny/results.csv")
    assert (results["epochs_trained"] <= 6).all()
    assert ran_stages(dvc(study, "repro", "profiles/tiny/dvc.yaml").stdout) == []


def test_a_grid_study_reproduces_every_run_once_and_an_objective_added_reruns_only_its_runs(study):
    """A tiny grid (two rungs with z x two objectives, a twin once, one seed) through real
    `dvc repro`: one stage per run, the report with its grid; then a third objective in the
    params is refused until the pipeline is regenerated, and only its new runs train."""
    grid = copy.deepcopy(PARAMS)
    grid["seeds"] = [0]
    grid["decoders"]["pixelcnn_2_alone"] = {**grid["decoders"]["pixelcnn_2"], "conditional": False}
    grid["objectives"] = {"elbo": {}, "aggressive": {"aggressive": True, "aggressive_max_inner_steps": 4,
                                                     "aggressive_check_every": 2}}
    (study / "profiles/g").mkdir(parents=True)
    (study / "profiles/g/params.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    sh(study, "vae-study", "study-pipeline", "g")
    runs = ["linear__elbo", "linear__aggressive", "pixelcnn_2__elbo", "pixelcnn_2__aggressive", "pixelcnn_2_alone"]
    ran = set(ran_stages(dvc(study, "repro", "profiles/g/dvc.yaml").stdout))
    assert ran == {f"profiles/g/dvc.yaml:{s}" for s in ("validate", "binarize", "gather", "report",
                                                         *(f"{st}@{r}-0" for st in ("train", "evaluate") for r in runs))}
    claims = json.loads((study / "reports/g/claims.json").read_text())
    assert "grid_objectives" in claims and "grid_top_against_alone" in claims
    history = read_history(Layout(study, "g").history("pixelcnn_2__aggressive", 0))
    assert history["aggressive"].iloc[0] == 1 and history["inner_steps_per_step"].iloc[0] >= 1

    grid["objectives"]["beta"] = {"beta": 0.5}
    (study / "profiles/g/params.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    refused = dvc(study, "repro", "profiles/g/dvc.yaml", check=False)
    assert refused.returncode != 0 and "out of step with profiles/g/params.yaml" in refused.stderr
    assert "vae-study study-pipeline g" in refused.stderr
    sh(study, "vae-study", "study-pipeline", "g")
    ran = set(ran_stages(dvc(study, "repro", "profiles/g/dvc.yaml").stdout))
    assert {s for s in ran if "@" in s} == {f"profiles/g/dvc.yaml:{st}@{r}__beta-0"
                                           for st in ("train", "evaluate") for r in ("linear", "pixelcnn_2")}
