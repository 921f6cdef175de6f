"""Every params file is safe under real `dvc repro` / `dvc exp run` (issue 23).

No rung name or seed reaches a shell as code; a misspelled key or a bad value stops the run in
the validate stage, before any stage runs or DVC deletes an output; where `dvc repro -s`
skips that stage, the refusal says how to get back what DVC removed; `vae-study
study-pipeline` writes nothing from a profile it refuses. Each test runs real `dvc` on a
temporary copy of the project (tiny models, synthetic data).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import REPO, TINY_PARAMS, built_study, dvc, private_copy, ran_stages, sh, stage_status

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny study (one seed) after one full `dvc repro`, committed."""
    return built_study(tmp_path_factory.mktemp("safety") / "study", TINY_PARAMS)[0]


@pytest.fixture
def study(built, tmp_path) -> Path:
    return private_copy(built, tmp_path)


def write_params(root: Path, raw: dict, extra: str = "") -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False) + extra)


def outputs(root: Path) -> dict[str, str]:
    """md5 of every file the stages wrote (data/ and reports/), but the validate stage's stamp."""
    files = [p for top in ("data", "reports") for p in sorted((root / top).rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files
            if p.name != "params.valid"}


# --- 1. names -------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "x;touch {marker};echo",
    "x$(touch {marker})",
    "x`touch {marker}`",
    "x';touch {marker};'",
    'x";touch {marker};"',
    "x\ntouch {marker}",
    "x&&touch {marker}",
    "x|touch {marker}",
    "x>{marker}",
]


def test_a_rung_name_never_runs_as_shell_code_even_under_repro_single_item(study, tmp_path):
    """The issue's reproduction for names of every shell shape: `dvc repro -s` skips the
    validate stage, so the stage's own first command must refuse the name before DVC runs the
    command that contains it."""
    markers = [tmp_path / f"INJECTED{i}" for i in range(len(HOSTILE_NAMES))]
    names = [shape.format(marker=marker) for shape, marker in zip(HOSTILE_NAMES, markers)]
    raw = copy.deepcopy(TINY_PARAMS)
    raw["decoders"].update({name: {"family": "linear"} for name in names})
    write_params(study, raw)
    for name in names[:2]:  # an evaluate stage needs its checkpoint before DVC runs its command
        model = study / f"data/models/{name}/seed0.pt"
        model.parent.mkdir(parents=True)
        shutil.copy(study / "data/models/linear/seed0.pt", model)
    stages = [f"evaluate@{name}-0" for name in names[:2]] + [f"train@{name}-0" for name in names]
    for stage in stages:
        proc = dvc(study, "repro", "-s", stage, check=False)
        assert proc.returncode != 0, (stage, proc.stdout)
        assert [m for m in markers if m.exists()] == [], f"{stage!r} ran shell code"
        assert "a decoder name must start with a letter and use only letters, digits and _" \
            in proc.stderr, proc.stderr
    proc = dvc(study, "repro", check=False)
    assert proc.returncode != 0 and ran_stages(proc.stdout) == ["validate"], proc.stdout
    assert [m for m in markers if m.exists()] == []


def test_a_seed_never_runs_as_shell_code(study, tmp_path):
    marker = tmp_path / "INJECTED"
    raw = copy.deepcopy(TINY_PARAMS)
    raw["seeds"] = [0, f"1;touch {marker}"]
    write_params(study, raw)
    proc = dvc(study, "repro", "-s", f"train@linear-1;touch {marker}", check=False)
    assert proc.returncode != 0 and not marker.exists()
    assert "seeds: got [0, '1;touch" in proc.stderr


@pytest.mark.parametrize("name", ["a b", "f(x)", "x\n", "1st", "ü"])
def test_a_name_outside_the_rule_is_refused_naming_the_rule(study, name):
    raw = copy.deepcopy(TINY_PARAMS)
    raw["decoders"][name] = {"family": "linear"}
    write_params(study, raw)
    proc = dvc(study, "repro", "-s", f"train@{name}-0", check=False)
    assert proc.returncode != 0
    assert "a decoder name must start with a letter and use only letters, digits and _" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- 2. misspelled keys ---------------------------------------------------------------------

@pytest.mark.parametrize("where, expected", [
    ("top", "trian: unknown section (did you mean 'train'?)"),
    ("section", "train.epoch: unknown key (did you mean 'epochs'?)"),
    ("rung", "decoders.pixelcnn_2.chanels: unknown option for family 'pixelcnn' (did you mean 'channels'?)"),
    ("objective", "decoders.linear.free_bit: unknown option for family 'linear' (did you mean 'free_bits'?)"),
])
def test_a_misspelled_key_at_any_level_stops_dvc_repro_and_exp_run_before_any_stage(study, where, expected):
    """The issue's reproduction: a key no stage declares used to leave DVC 'up to date'."""
    raw = copy.deepcopy(TINY_PARAMS)
    if where == "top":
        raw["trian"] = {"epochs": 1}
    elif where == "section":
        raw["train"]["epoch"] = 1
    elif where == "rung":
        raw["decoders"]["pixelcnn_2"]["chanels"] = 8
    else:
        raw["decoders"]["linear"]["free_bit"] = 0.5
    write_params(study, raw)
    before = outputs(study)
    for command in (("repro",), ("exp", "run")):
        proc = dvc(study, *command, check=False)
        assert proc.returncode != 0, proc.stdout
        assert expected in proc.stderr, proc.stderr
        assert ran_stages(proc.stdout) == ["validate"]
        assert outputs(study) == before


# --- 3. bad values: refused before DVC deletes anything --------------------------------------

@pytest.mark.parametrize("path, value, target", [
    ("binarize.valid_size", 0, "binarize"),
    ("train.epochs", 0, "train@linear-0"),
    ("decoders.pixelcnn_2.channels", 0, "train@pixelcnn_2-0"),
    ("evaluate.k", 0, "evaluate@pixelcnn_2-0"),
    ("report.collapse_threshold_nats", -1.0, "report"),
])
def test_a_bad_value_for_each_stage_is_refused_before_any_output_is_deleted(study, path, value, target):
    raw = copy.deepcopy(TINY_PARAMS)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    write_params(study, raw)
    before = outputs(study)
    for command in (("repro",), ("repro", target)):
        proc = dvc(study, *command, check=False)
        assert proc.returncode != 0
        assert f"{path}: got {value}" in proc.stderr, proc.stderr
        assert "No stage that reads the params file ran" in proc.stderr
        assert ran_stages(proc.stdout) == ["validate"]
        assert outputs(study) == before


def test_exp_run_with_a_bad_value_deletes_nothing_and_says_how_to_undo_the_edit(study):
    before = outputs(study)
    proc = dvc(study, "exp", "run", "-S", "train.epochs=0", check=False)
    assert proc.returncode != 0
    assert "train.epochs: got 0" in proc.stderr
    assert "git checkout -- params.yaml" in proc.stderr
    assert ran_stages(proc.stdout) == ["validate"]
    assert outputs(study) == before


def test_where_repro_single_item_skips_validation_the_refusal_says_how_to_restore(study):
    """`dvc repro -s` runs only the named stage, and DVC deletes its outputs before its command
    refuses the value: the message says how to get them back, and that works."""
    before = outputs(study)
    raw = copy.deepcopy(TINY_PARAMS)
    raw["report"]["collapse_threshold_nats"] = -1.0
    write_params(study, raw)
    proc = dvc(study, "repro", "-s", "report", check=False)
    assert proc.returncode != 0 and "report.collapse_threshold_nats: got -1.0" in proc.stderr
    assert "`git checkout -- reports` restores it" in proc.stderr
    assert not (study / "reports/report.md").exists()  # what DVC does before any command runs
    sh(study, "git", "checkout", "--", "reports", "params.yaml")

    raw = copy.deepcopy(TINY_PARAMS)
    raw["train"]["lr"] = 2.0
    write_params(study, raw)
    proc = dvc(study, "repro", "-s", "train@linear-0", check=False)
    assert proc.returncode != 0 and "train.lr: got 2.0" in proc.stderr
    assert "`dvc checkout train@linear-0` restores the last ones" in proc.stderr
    assert not (study / "data/models/linear/seed0.pt").exists()
    sh(study, "git", "checkout", "--", "params.yaml")
    dvc(study, "checkout", "train@linear-0")
    assert outputs(study) == before
    assert stage_status(study) == set()


def test_the_restore_hint_names_a_named_studys_files_and_quotes_the_stage(tmp_path, monkeypatch):
    from stages.cli import dvc_hint

    monkeypatch.chdir(tmp_path)  # no lock file here: whether a stage ever ran cannot be told

    assert "`git checkout -- reports/long` restores it" in dvc_hint("profiles/long/dvc.yaml:report", {})
    assert "`dvc checkout profiles/long/dvc.yaml:train@mlp-0` restores" in dvc_hint(
        "profiles/long/dvc.yaml:train@mlp-0", {})
    exp = dvc_hint("profiles/long/dvc.yaml:validate", {"DVC_EXP_BASELINE_REV": "abc"})
    assert "undo them all with `git checkout -- profiles/long/params.yaml`" in exp
    assert "No stage that reads the params file ran" in exp
    assert "`dvc checkout 'train@x;rm -rf ~-0'` restores" in dvc_hint("train@x;rm -rf ~-0", {})


def test_the_hint_for_a_stage_the_lock_does_not_record_promises_nothing_to_restore(tmp_path, monkeypatch):
    """A stage that never completed (a new or misspelled rung) has no outputs in the cache:
    the hint says so instead of pointing at `dvc checkout`; a recorded stage keeps the pointer."""
    from stages.cli import dvc_hint, recorded_in_lock

    (tmp_path / "profiles/long").mkdir(parents=True)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train@mlp-0:\n    cmd: x\n")
    (tmp_path / "profiles/long/dvc.lock").write_text("schema: '2.0'\nstages:\n  train@conv-1:\n    cmd: x\n")
    monkeypatch.chdir(tmp_path)
    assert recorded_in_lock("train@mlp-0") is True
    assert recorded_in_lock("train@x;touch y-0") is False
    assert recorded_in_lock("profiles/long/dvc.yaml:train@conv-1") is True
    assert recorded_in_lock("profiles/long/dvc.yaml:train@mlp-0") is False
    assert "`dvc checkout train@mlp-0` restores" in dvc_hint("train@mlp-0", {})
    new = dvc_hint("train@x;touch y-0", {})
    assert "not recorded in dvc.lock" in new and "dvc checkout" not in new
    assert "not recorded in profiles/long/dvc.lock" in dvc_hint("profiles/long/dvc.yaml:evaluate@mlp-0", {})
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")
    assert recorded_in_lock("train@mlp-0") is None  # cannot tell: the old pointer stands
    assert "`dvc checkout train@mlp-0` restores" in dvc_hint("train@mlp-0", {})


def test_a_valid_edit_reruns_the_validation_and_nothing_else_through_it(study):
    """The validate stage's output has the same bytes for every valid file, so it adds no rerun:
    a report setting reruns the validation (seconds) and the report only."""
    raw = copy.deepcopy(TINY_PARAMS)
    raw["report"]["collapse_threshold_nats"] = 2.0
    write_params(study, raw)
    assert stage_status(study) == {"validate", "report"}
    assert ran_stages(dvc(study, "repro").stdout) == ["validate", "report"]


# --- 4. a named study's pipeline from a refused profile ------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("decoders: [unclosed\n", "not valid YAML at line 2"),
    (yaml.safe_dump({k: v for k, v in TINY_PARAMS.items() if k != "decoders"}), "decoders: must be"),
    (yaml.safe_dump(TINY_PARAMS) + "seeds: [1]\n", 'duplicate key "seeds"'),
    (yaml.safe_dump({**TINY_PARAMS, "seeds": 0}), "seeds: got 0"),
])
def test_study_pipeline_writes_nothing_from_a_profile_it_refuses(tmp_path, text, expected):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    profile = tmp_path / "profiles/broken"
    profile.mkdir(parents=True)
    (profile / "params.yaml").write_text(text)
    proc = sh(tmp_path, "vae-study", "study-pipeline", "broken", "--root", str(tmp_path), check=False)
    assert proc.returncode == 1 and expected in proc.stderr, proc.stderr
    assert str(profile / "params.yaml") in proc.stderr and "Traceback" not in proc.stderr
    assert not (profile / "dvc.yaml").exists()

    (profile / "dvc.yaml").write_text("# an earlier pipeline\n")
    proc = sh(tmp_path, "vae-study", "study-pipeline", "broken", "--root", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert (profile / "dvc.yaml").read_text() == "# an earlier pipeline\n"
