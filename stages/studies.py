"""Named studies: the default pipeline run again with another params file, beside the default.

A named study `<name>` lives in profiles/<name>/: its params.yaml (every key required, as in the
root params.yaml) and its dvc.yaml, which is derived from the root dvc.yaml by `pipeline()`:
every stage but download, run from the project root (`wdir`), with `--params
profiles/<name>/params.yaml --study <name>`, its outputs under data/<name>/ and reports/<name>/
(`stages.layout.Layout(study=...)`), and its report compared with the default study's results
table. `dvc repro profiles/<name>/dvc.yaml` reproduces it and keeps its own dvc.lock; the root
`dvc repro` never runs it. `vae-study study-pipeline <name>` rewrites the file after dvc.yaml
changes (a test keeps the two in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stages.errors import ParamsError
from stages.fsutil import write_text
from stages.layout import Layout
from stages.paramsfile import read_yaml

BASELINE = "reports/results.csv"  # the default study's results table, which a study compares with
HEADER = """\
# The {name} study (profiles/{name}/params.yaml): the default pipeline's stages with that params
# file, writing data/{name}/ and reports/{name}/. Run from the project root:
#     dvc repro profiles/{name}/dvc.yaml
# Every stage runs in the project root (wdir); the MNIST download is the default pipeline's.
# Generated from ../../dvc.yaml by `vae-study study-pipeline {name}`: edit dvc.yaml, then rerun that.
"""


def study_path(path: str, study: str) -> str:
    """A default-study path in a named study: data/x -> data/<study>/x, reports/x ->
    reports/<study>/x; the downloaded files (data/raw) and the code are shared."""
    for top in ("data/", "reports/"):
        if path.startswith(top) and not path.startswith("data/raw"):
            return f"{top}{study}/{path[len(top):]}"
    return path


def _paths(entries: list, study: str) -> list:
    """deps/outs/metrics/plots entries: plain paths, or {path: options}."""
    return [{study_path(next(iter(e)), study): next(iter(e.values()))} if isinstance(e, dict)
            else study_path(e, study) for e in entries]


def pipeline(default: dict[str, Any], study: str) -> dict[str, Any]:
    """The named study's dvc.yaml (as a mapping) derived from the default one."""
    Layout(Path("."), study)  # refuses a bad study name
    params_file = f"profiles/{study}/params.yaml"
    stages = {}
    for name, stage in default["stages"].items():
        if name == "download":
            continue
        s: dict[str, Any] = {"wdir": "../.."}
        for key, value in stage.items():
            if key == "cmd":  # one command line or a list of them, each run with the study's files
                commands = [f"{c} --params {params_file} --study {study}"
                            for c in (value if isinstance(value, list) else [value])]
                if name == "report":
                    commands[-1] += f" --compare-with {BASELINE}"
                value = commands if isinstance(value, list) else commands[0]
            elif key == "params":
                value = [{params_file: value}]
            elif key in ("deps", "outs", "metrics", "plots"):
                value = _paths(value, study)
                if key == "deps":  # the params file as a whole (the validate stage's input)
                    value = [params_file if v == "params.yaml" else v for v in value]
                if key == "deps" and name == "report":
                    value = [*value, BASELINE]
            s[key] = value
        stages[name] = s
    plots = [{name: {**spec, "y": {study_path(f, study): col for f, col in spec["y"].items()}}}
             for plot in default.get("plots", []) for name, spec in plot.items()]
    return {"stages": stages, "plots": plots}


def write_pipeline(root: Path, study: str) -> Path:
    """Write profiles/<study>/dvc.yaml from root/dvc.yaml (atomically), once the study's params
    file passes validation: a pipeline DVC cannot expand (a YAML error, no `decoders`) would
    break `dvc status` and `dvc repro` of the whole project, the default study's included."""
    from stages.params import load_params

    Layout(root, study)  # refuses a bad study name before any path is built from it
    params = root / "profiles" / study / "params.yaml"
    if not params.exists():
        raise ParamsError(f"{params}: not found; a named study needs its params file first "
                          "(start from a copy of params.yaml)")
    load_params(params)  # every problem named, nothing written
    default = read_yaml(root / "dvc.yaml")
    target = params.with_name("dvc.yaml")
    body = yaml.safe_dump(pipeline(default, study), sort_keys=False, width=1000)
    write_text(target, HEADER.format(name=study) + body)
    return target
