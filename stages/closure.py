"""The code a stage runs: the import closure of its `vae-study` commands.

DVC reruns a stage only when one of its `deps` changes, so a module the stage's command imports
but does not list is a silent staleness bug: edit it and `dvc status` stays clean over a stale
output. A stage's command is `vae-study <name> ...`: the console script `stages.cli`, which
dispatches to the module `stages.<name>` (`stages.cli.command_module`) and nothing else. Its
closure is every project file those two import, transitively, function-level imports included
(read from the source with `ast`, nothing imported), plus the `__init__.py` of every package on
the way. `tests/test_closure.py` holds every stage of every pipeline to it, and the evaluate
stage digests the same files into each evaluation (`stages.evaluate.code_sha256`).
"""

from __future__ import annotations

import ast
import functools
import shlex
from pathlib import Path

PACKAGE = "stages"
STAGES = Path(__file__).resolve().parent  # the package folder
CLI = "vae-study"
# Subcommands whose module is not stages.<name with - as _>; a new command needs no entry here.
ALIASES = {"check-names": "paramsfile", "study-pipeline": "studies"}


def command_module(command: str) -> str:
    """The module a `vae-study <command>` runs: stages.<command> (hyphens as underscores)."""
    return f"{PACKAGE}.{ALIASES.get(command, command.replace('-', '_'))}"


def module_file(module: str, package_dir: Path = STAGES) -> Path | None:
    """The source file of a project module (a package's __init__.py), None outside the project."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.cache
def _imports(path: Path, package_dir: Path) -> frozenset[str]:
    """Every project module the file imports anywhere (top level, in functions, under if)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a import b`: b is a submodule or a name of a; either way a is imported
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            found.update(m for m in _with_parents(name) if module_file(m, package_dir))
    return frozenset(found)


def closure(modules: list[str], package_dir: Path = STAGES) -> set[Path]:
    """The source files of `modules` and of every project module they import, transitively."""
    todo = [m for name in modules for m in _with_parents(name)]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module, package_dir)
        if path is None:
            raise ValueError(f"{module}: no such module under {package_dir}")
        files.add(path)
        todo.extend(_imports(path, package_dir) - seen)
    return files


def command_closure(command: str, package_dir: Path = STAGES) -> set[Path]:
    """The files `vae-study <command>` runs: the CLI's closure and its command module's."""
    return closure([f"{PACKAGE}.cli", command_module(command)], package_dir)


def commands_of(cmd: str | list[str]) -> list[str]:
    """The `vae-study` subcommands of a DVC stage's cmd (a line or a list of lines)."""
    lines = cmd if isinstance(cmd, list) else [cmd]
    found = []
    for line in lines:
        words = shlex.split(line)
        for i, word in enumerate(words[:-1]):
            if word == CLI and (i == 0 or words[i - 1] in ("&&", ";", "||")):
                found.append(words[i + 1])
    return found


def stage_code(cmd: str | list[str], package_dir: Path = STAGES) -> set[Path]:
    """Every project file a stage's command runs."""
    return set().union(*(command_closure(c, package_dir) for c in commands_of(cmd)))


def uncovered(files: set[Path], deps: list[str], root: Path) -> list[str]:
    """The files (relative to root) that no dep covers: a dep is the file itself or a folder
    holding it."""
    dep_paths = [(root / d).resolve() for d in deps]
    missing = []
    for f in sorted(files):
        f = f.resolve()
        if not any(f == d or d in f.parents for d in dep_paths):
            missing.append(f.relative_to(root.resolve()).as_posix())
    return missing


def pipeline_problems(pipeline: dict, root: Path, package_dir: Path = STAGES) -> list[str]:
    """What is wrong with the code deps of a parsed dvc.yaml (stages run from the project root):
    a file a stage runs that no dep covers (a stale output waiting to happen), or a code dep it
    does not run (a needless rerun). Empty when every stage lists exactly the code it runs."""
    problems = []
    code_root = package_dir.resolve()
    for name, stage in pipeline.get("stages", {}).items():
        body = stage.get("do", stage)  # a foreach stage's template
        files = stage_code(body["cmd"], package_dir)
        deps = [d for d in body.get("deps", []) if isinstance(d, str)]
        for missing in uncovered(files, deps, root):
            problems.append(f"{name}: runs {missing}, which no dep covers")
        for dep in deps:
            path = (root / dep).resolve()
            if path != code_root and code_root not in path.parents:
                continue
            if not any(f.resolve() == path or path in f.resolve().parents for f in files):
                problems.append(f"{name}: lists {dep}, which it does not run")
    return problems


def code_sha256(files: set[Path], package_dir: Path = STAGES) -> str:
    """sha256 over each file's path (relative to the package's parent) and bytes, in path order."""
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(files):
        data = f.read_bytes()
        name = f.relative_to(package_dir.parent).as_posix()
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()
