"""A params file read the way DVC reads it, and the check that runs before a name reaches a shell.

DVC reads params.yaml (for `params:` dependencies, `dvc exp show` and the `${...}` of dvc.yaml)
with ruamel.yaml's safe loader: YAML 1.2, so `1e-3` is a float and `yes` a string, and a key
given twice is an error. The stages read it with the same loader, so a value means the same to
`vae-study` as to DVC, and a file DVC would refuse is refused here first, with its line.

dvc.yaml interpolates the rung names (the keys of `decoders`) and the seeds into stage names,
output paths and command lines, and DVC hands each command line to a shell. `name_problems`
lists every name or seed that is not safe there; `vae-study check-names`, the first command of
every train and evaluate stage (a command with nothing interpolated into it), refuses such a
file before DVC runs the command that would contain the name. This module imports no torch,
so that check costs a fraction of a second.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from stages.errors import ParamsError
from stages.options import PARAMS, ROOT, STUDY
from stages.schema import Errors

RUNG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # use fullmatch: `$` would let "x\n" through
RUNG_NAME_RULE = ("a decoder name must start with a letter and use only letters, digits and _, "
                  "at most 64 characters (it names DVC stages, files and command arguments)")
OBJECTIVE_NAME_RULE = RUNG_NAME_RULE.replace("a decoder name", "an objective name") + ", without '__'"
SEEDS_RULE = "allowed: a non-empty list of distinct integers in [0, 2^31)"


def read_yaml(path: str | Path) -> Any:
    """The parsed document, as DVC parses it; ParamsError naming the file and line otherwise."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: cannot be read: {e}") from None
    try:
        return YAML(typ="safe").load(text)
    except YAMLError as e:
        where = ""
        if isinstance(e, MarkedYAMLError) and e.problem_mark is not None:
            where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
        problem = e.problem if isinstance(e, MarkedYAMLError) and e.problem else str(e)
        if isinstance(e, DuplicateKeyError):
            problem += "; a key may appear only once in a mapping (DVC refuses the file too)"
        raise ParamsError(f"{path}: not valid YAML{where}: {problem}") from None
    except (ValueError, TypeError, RecursionError) as e:  # odd input the loader does not wrap
        raise ParamsError(f"{path}: not valid YAML: {e}") from None


def rung_name_ok(name: Any) -> bool:
    return isinstance(name, str) and RUNG_NAME.fullmatch(name) is not None


def objective_name_ok(name: Any) -> bool:
    """An objective's name joins a rung's in a grid run's name, `<rung>__<objective>`."""
    return rung_name_ok(name) and "__" not in name


def seeds_ok(raw: Any) -> bool:
    return (isinstance(raw, list) and len(raw) > 0
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in raw)
            and len(set(raw)) == len(raw))


def name_problems(raw: Any, errors: Errors) -> None:
    """Add a line to errors for every rung or objective name and seed dvc.yaml may not interpolate."""
    if not isinstance(raw, dict):
        errors.add("(top level)", f"must be a mapping of sections, got {type(raw).__name__}")
        return
    decoders = raw.get("decoders")
    if not isinstance(decoders, dict) or not decoders:
        errors.add("decoders", "must be a non-empty mapping of rung name -> {family: ..., ...}")
    else:
        for name in decoders:
            if not rung_name_ok(name):
                where = f"decoders.{name}" if isinstance(name, str) and name.isprintable() else \
                    f"decoders: key {name!r}"
                errors.add(where, RUNG_NAME_RULE)
    objectives = raw.get("objectives")
    for name in objectives if isinstance(objectives, dict) else ():
        if not objective_name_ok(name):
            where = f"objectives.{name}" if isinstance(name, str) and name.isprintable() else \
                f"objectives: key {name!r}"
            errors.add(where, OBJECTIVE_NAME_RULE)
    if not seeds_ok(raw.get("seeds")):
        errors.add("seeds", f"got {raw.get('seeds')!r}; {SEEDS_RULE}")


def check_names(path: str | Path) -> None:
    """Raise ParamsError unless every rung name and seed of the file is safe to interpolate."""
    errors = Errors()
    name_problems(read_yaml(path), errors)
    errors.raise_if_any(str(path))


def command(params: Path = PARAMS, root: Path = ROOT, study: str = STUDY) -> None:
    """Refuse a params file whose rung names or seeds are not safe in a command line.

    The first command of every train and evaluate stage in dvc.yaml: it has nothing
    interpolated into it, so it runs before DVC hands the shell a command built from a name.
    """
    from stages.layout import Layout

    Layout(root, study)  # refuses a bad study name
    check_names(params)
