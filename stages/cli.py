"""The `vae-study` command: `vae-study <name> ...` runs the typer function `command` of the
module `stages.<name>` (`stages.closure.command_module`), one module per DVC stage plus
validate, bench and the study tools, and imports nothing else of the project: so a stage's
code is this file and its own module's import closure (`stages.closure`), which its DVC deps
list.

A StudyError (bad params, missing data, a refused checkpoint, a full disk) is printed as one
message with exit code 1; anything else is a bug and keeps its traceback. Inside a DVC stage
(DVC sets DVC_STAGE) the message also says what DVC removed before the command ran and how to
get it back (`dvc_hint`).
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

from stages.closure import STAGES, command_module, module_file
from stages.errors import StudyError


def command_doc(path: Path) -> str | None:
    """The first docstring line of the module's `command` function, None when it has none
    (read from the source, nothing imported)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == "command":
            return (ast.get_docstring(node) or "").splitlines()[0]
    return None


def commands() -> dict[str, str]:
    """Every subcommand and the first line of its docstring (parses every module: for --help)."""
    found = {}
    for path in sorted([*STAGES.glob("*.py"), *STAGES.glob("*/__init__.py")]):
        doc = command_doc(path)
        if doc is not None:
            found[command_name(path)] = doc
    return found


def command_name(path: Path) -> str:
    """The one name `vae-study` runs a command module under (its alias, if it has one)."""
    from stages.closure import ALIASES

    module = path.parent.name if path.name == "__init__.py" else path.stem
    return next((a for a, m in ALIASES.items() if m == module), module.replace("_", "-"))


def usage() -> str:
    listed = "\n".join(f"  {name:<15} {doc}" for name, doc in sorted(commands().items()))
    return ("Usage: vae-study COMMAND [ARGS]...   (vae-study COMMAND --help for its options)\n\n"
            "Posterior collapse in VAEs: the stages of the DVC study.\n\nCommands:\n" + listed)


def run_command(name: str, args: list[str]) -> None:
    """Import stages.<name> and run its `command` with args."""
    import typer

    module = command_module(name)
    path = module_file(module)
    # only this command's file is parsed: a stage's start-up does not read every module
    if path is None or command_doc(path) is None or command_name(path) != name:
        raise SystemExit(f"vae-study: no command {name!r}\n\n{usage()}")
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(name)(importlib.import_module(module).command)
    app(args=args, prog_name=f"vae-study {name}")


def dvc_hint(stage: str, env: dict[str, str]) -> str:
    """What a refusal inside a DVC stage means for that stage's outputs, and how to get them back.

    DVC deletes a stage's outputs before it runs the command, so a stage that refuses its input
    leaves them deleted. `dvc repro` and `dvc exp run` validate the params file in the validate
    stage before any stage that reads it; `dvc repro -s <stage>` (and --downstream) skip it.
    """
    import shlex

    base = stage.rsplit(":", 1)[-1].split("@", 1)[0]
    prefix = stage.rsplit(":", 1)[0] if ":" in stage else ""
    study = prefix.split("/")[1] if prefix.startswith("profiles/") and prefix.count("/") >= 2 else ""
    params_file = f"profiles/{study}/params.yaml" if study else "params.yaml"
    lines = []
    if env.get("DVC_EXP_BASELINE_REV"):
        lines.append("Under `dvc exp run`, any values given with -S are already written into "
                     f"{params_file}: fix the value there (`git diff {params_file}` shows every "
                     f"uncommitted change), or undo them all with `git checkout -- {params_file}`.")
    if base == "validate":
        lines.append("No stage that reads the params file ran, and none of their outputs was touched.")
        return "\n".join(lines)
    if base == "report":  # its outputs are not in the DVC cache but in git
        reports = f"reports/{study}" if study else "reports"
        lines.append(f"DVC removed the outputs of stage '{stage}' before running it. Once the problem "
                     f"is fixed, `dvc repro` renders them again; the rendered report is tracked by "
                     f"git: `git checkout -- {reports}` restores it.")
    elif recorded_in_lock(stage) is False:
        lines.append(f"Stage '{stage}' is not recorded in {lock_file(stage)}: it has never completed "
                     "here, so DVC has no earlier outputs of it to restore. Once the problem is fixed, "
                     "`dvc repro` computes them.")
    else:
        lines.append(f"DVC removed the outputs of stage '{stage}' before running it. Once the "
                     "problem is fixed, `dvc repro` recomputes them; `dvc checkout "
                     f"{shlex.quote(stage)}` restores the last ones from the DVC cache instead "
                     "(`dvc pull` fetches them from a remote).")
    return "\n".join(lines)


def lock_file(stage: str) -> Path:
    """The lock file of the stage's pipeline, relative to the project root. `stage` is
    DVC_STAGE: `name` for dvc.yaml, `profiles/<study>/dvc.yaml:name` for a study."""
    pipeline = stage.rpartition(":")[0]
    return Path(pipeline).with_suffix(".lock") if pipeline else Path("dvc.lock")


def recorded_in_lock(stage: str) -> bool | None:
    """Whether the lock file of the stage's pipeline records it (DVC writes a stage there once it
    has completed); None where that cannot be told (no lock file, or one that does not parse)."""
    from ruamel.yaml import YAML, YAMLError

    name = stage.rpartition(":")[2]
    try:
        stages = YAML(typ="safe").load(lock_file(stage).read_text()).get("stages", {})
    except (OSError, YAMLError, AttributeError, UnicodeDecodeError):
        return None
    return name in stages if isinstance(stages, dict) else None


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if args else 2)
    try:
        run_command(args[0], args[1:])
    except (StudyError, MemoryError, RuntimeError) as e:
        import os

        if isinstance(e, StudyError):
            message = f"error: {e}"
        elif out_of_memory(e):
            command = args[0:2] if args[0] in ("train", "evaluate") else args[0:1]
            message = f"error: out of memory in `vae-study {' '.join(command)}`: {first_line(e)}\n" \
                      f"{MEMORY_ADVICE}"
        else:
            raise  # a bug: keep its traceback
        if os.environ.get("DVC_STAGE"):
            message += "\n" + dvc_hint(os.environ["DVC_STAGE"], dict(os.environ))
        print(message, file=sys.stderr)
        raise SystemExit(1) from None


MEMORY_ADVICE = ("A rung or batch this large does not fit this machine's memory: lower the rung's "
                 "channels or n_layers, train.batch_size, or evaluate.batch_size and chunk_size.")


def out_of_memory(e: BaseException) -> bool:
    """torch's CPU and CUDA allocators raise RuntimeError (torch.OutOfMemoryError on CUDA)."""
    text = str(e)
    return isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    main()
