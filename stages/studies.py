"""Named studies: the default pipeline run again with another params file, beside the default.

A named study `<name>` lives in profiles/<name>/: its params.yaml (every key required, as in the
root params.yaml) and its dvc.yaml, which is derived from the root dvc.yaml by `pipeline()`:
every stage but download, run from the project root (`wdir`), with `--params
profiles/<name>/params.yaml --study <name>`, its outputs under data/<name>/ and reports/<name>/
(`stages.layout.Layout(study=...)`). Its report reads its own runs alone: a report that compared
with the default study's results table would make `dvc repro profiles/<name>/dvc.yaml` rerun
the whole default study first wherever that is stale (on every fresh clone), so the comparison
across studies is `vae-study answer`'s, from the committed reports.
`dvc repro profiles/<name>/dvc.yaml` reproduces it and keeps its own dvc.lock; the root
`dvc repro` never runs it. `vae-study study-pipeline <name>` rewrites the file after dvc.yaml
changes (a test keeps the two in step).

A grid study (its params have an `objectives` section, `stages.params.expand_grid`) trains and
evaluates every rung with z under every objective and each rung without z once: its train and
evaluate stages are generated per run and seed (`grid_stage`). After adding a rung or an
objective to its params, rerun `vae-study study-pipeline <name>` (its validate stage refuses to
run a pipeline that no longer matches the params).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from stages import gather
from stages.errors import ParamsError
from stages.fsutil import write_text
from stages.layout import Layout
from stages.options import ROOT
from stages.paramsfile import read_yaml

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


def _substitute(value: Any, old: str, new: str) -> Any:
    """`old` replaced by `new` in every string of a stage entry (keys of {path: options} too)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_substitute(v, old, new) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, old, new): _substitute(v, old, new) for k, v in value.items()}
    return value


def grid_stage(stage: dict[str, Any], cells: dict[str, Any], seeds: tuple[int, ...]) -> dict[str, Any]:
    """A train or evaluate stage of a grid study: one stage per run and seed (`foreach` over
    `<run>-<seed>`, the default study's stage names), each depending on its rung's entry
    (`decoders.<rung>`) and its objective's (`objectives.<objective>`)."""
    body = {k: v for k, v in stage.items() if k != "matrix"}
    params = []
    for entry in body.get("params", []):
        for file, keys in entry.items():
            keys = [k for key in keys for k in ((key, "objectives.${item.objective}")
                                                if key == "decoders.${item.decoder}" else (key,))]
            params.append({file: _substitute(keys, "${item.decoder}", "${item.rung}")})
    body = {**_substitute(body, "${item.decoder}", "${item.run}"), "params": params}
    runs = {f"{run}-{seed}": {"run": run, "rung": cell.rung, "objective": cell.objective, "seed": seed}
            for run, cell in cells.items() for seed in seeds}
    return {"foreach": runs, "do": body}


def pipeline(default: dict[str, Any], study: str, params: Any = None) -> dict[str, Any]:
    """The named study's dvc.yaml (as a mapping) derived from the default one; with `params`
    of a grid study (an `objectives` section), its train and evaluate stages per grid run."""
    Layout(Path("."), study)  # refuses a bad study name
    if study == gather.FOLDER:  # reports/inputs is the default study's gathered copy
        raise ParamsError(f"study name {study!r} is taken by the default study's reports/{study}/: "
                          "choose another")
    params_file = f"profiles/{study}/params.yaml"
    stages = {}
    for name, stage in default["stages"].items():
        if name == "download":
            continue
        s: dict[str, Any] = {"wdir": "../.."}
        # the study's params file for the commands of a stage that reads params (gather reads none)
        given = f" --params {params_file}" if "params" in stage or "params.yaml" in stage.get("deps", []) else ""
        for key, value in stage.items():
            if key == "cmd":  # one command line or a list of them, each run with the study's files
                commands = [f"{c}{given} --study {study}" for c in (value if isinstance(value, list) else [value])]
                value = commands if isinstance(value, list) else commands[0]
            elif key == "params":
                value = [{params_file: value}]
            elif key in ("deps", "outs", "metrics", "plots"):
                value = _paths(value, study)
                if key == "deps":  # the params file as a whole (the validate stage's input)
                    value = [params_file if v == "params.yaml" else v for v in value]
            s[key] = value
        if params is not None and params.cells:  # a grid study
            if "matrix" in s:
                s = grid_stage(s, params.cells, params.seeds)
            elif name == "report":
                s["params"] = [{f: [*keys, "objectives"]} for entry in s["params"] for f, keys in entry.items()]
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
    checked = load_params(params)  # every problem named, nothing written
    default = read_yaml(root / "dvc.yaml")
    target = params.with_name("dvc.yaml")
    body = yaml.safe_dump(pipeline(default, study, checked), sort_keys=False, width=1000)
    write_text(target, HEADER.format(name=study) + body)
    return target


def check_grid_pipeline(root: Path, study: str, params: Any) -> None:
    """A grid study's pipeline lists its runs: refuse to go on when they are not the runs its
    params make (a rung or objective added, renamed or removed since it was generated)."""
    if not study or not params.cells:
        return
    target = root / "profiles" / study / "dvc.yaml"
    have = read_yaml(target) if target.exists() else {}
    want = pipeline(read_yaml(root / "dvc.yaml"), study, params)

    def runs(p: dict) -> set[str]:
        return set(p.get("stages", {}).get("train", {}).get("foreach", {}) or {})

    if have.get("stages") != want["stages"]:
        missing, extra = sorted(runs(want) - runs(have)), sorted(runs(have) - runs(want))
        detail = "; ".join(part for part in (
            f"runs the params make but it lacks: {', '.join(missing)}" if missing else "",
            f"runs it has that the params no longer make: {', '.join(extra)}" if extra else "") if part)
        raise ParamsError(f"{target} is out of step with profiles/{study}/params.yaml or dvc.yaml"
                          f"{' (' + detail + ')' if detail else ''}: run `vae-study study-pipeline "
                          f"{study}`, then `dvc repro {target.relative_to(root)}` again")


def command(name: str = typer.Argument(..., help="the study: profiles/<name>/params.yaml"),
            root: Path = ROOT) -> None:
    """Write profiles/<name>/dvc.yaml, the default pipeline run with that study's params."""
    print(f"wrote {write_pipeline(root, name)}; run it with `dvc repro profiles/{name}/dvc.yaml`")
