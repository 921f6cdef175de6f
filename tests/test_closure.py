"""Every stage's deps are the code it runs: the import closure of its `vae-study` commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import stale_code
from stages import closure

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted([REPO / "dvc.yaml", *REPO.glob("profiles/*/dvc.yaml")])


def rel(files: set[Path]) -> set[str]:
    return {f.relative_to(REPO).as_posix() for f in files}


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_stage_lists_exactly_the_code_it_runs(pipeline):
    problems = closure.pipeline_problems(yaml.safe_load(pipeline.read_text()), REPO)
    assert problems == []


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_committed_lock_records_the_code_and_params_main_ships(pipeline):
    """A committed study is what main computes: no stage's lock entry records other code, params
    or command (after such a change, rerun the study: `dvc repro <pipeline>`, and commit)."""
    assert stale_code(REPO, pipeline.relative_to(REPO).as_posix()) == {}


def test_the_check_fails_on_a_removed_dep_and_on_a_dep_the_stage_does_not_run():
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    evaluate = pipeline["stages"]["evaluate"]
    evaluate["deps"] = [d for d in evaluate["deps"] if d != "stages/estimators.py"]
    pipeline["stages"]["binarize"]["deps"].append("stages/model")
    assert closure.pipeline_problems(pipeline, REPO) == [
        "binarize: lists stages/model, which it does not run",
        "evaluate: runs stages/estimators.py, which no dep covers"]


def test_the_closure_follows_function_level_imports_and_packages(tmp_path):
    pkg = tmp_path / "stages"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("import os\n")
    (pkg / "lazy.py").write_text("def f():\n    if True:\n        from stages.sub import leaf\n")
    (pkg / "top.py").write_text("import json\n\ndef g():\n    import stages.lazy\n")
    (pkg / "unused.py").write_text("")
    files = closure.closure(["stages.top"], pkg)
    assert {f.relative_to(pkg).as_posix() for f in files} == {
        "__init__.py", "top.py", "lazy.py", "sub/__init__.py", "sub/leaf.py"}


def test_a_stage_command_runs_the_cli_and_its_own_module_only():
    assert closure.commands_of(["vae-study check-names", "vae-study train mlp --seed 0"]) == [
        "check-names", "train"]
    assert closure.command_module("study-pipeline") == "stages.studies"
    assert closure.command_module("train") == "stages.train"


def test_binarize_runs_no_decoder_family_and_the_report_no_training():
    binarize = rel(closure.command_closure("binarize"))
    assert not any(f.startswith("stages/model") for f in binarize) and "stages/params.py" not in binarize
    report = rel(closure.command_closure("report"))
    assert not {"stages/train.py", "stages/objectives.py", "stages/checkpoint.py",
                "stages/estimators.py", "torch"} & report


def test_gather_runs_no_report_code_so_a_report_change_reruns_the_report_alone():
    gather = rel(closure.command_closure("gather"))
    assert "stages/gather.py" in gather and not any(f.startswith("stages/report") for f in gather)
    assert "stages/params.py" not in gather  # nor the params schema: it copies files


@pytest.mark.parametrize("command", ["download", "binarize", "check-names", "gather", "report", "validate"])
def test_what_a_command_imports_when_it_runs_is_inside_its_static_closure(command):
    """The static closure is a superset of what Python actually loads for the command (its
    module-level imports; function-level ones are read from the source by the same walk)."""
    probe = ("import sys; from stages import cli; sys.argv = ['vae-study', %r, '--help']\n"
             "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
             "print('\\n'.join(m for m in sys.modules if m == 'stages' or m.startswith('stages.')))"
             % command)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    loaded = {closure.module_file(m) for m in out.split() if m.startswith("stages")}
    assert loaded and None not in loaded
    assert rel(loaded) <= rel(closure.command_closure(command))


def test_each_command_is_found_by_the_cli_without_importing_it():
    from stages import cli

    names = set(cli.commands())
    assert {"download", "validate", "binarize", "train", "evaluate", "gather", "report", "check-names",
            "study-pipeline", "bench"} <= names
    for name in names:
        assert closure.module_file(closure.command_module(name)) is not None, name
