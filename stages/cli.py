"""The `vae-study` command: one subcommand per DVC stage, plus validate and bench.

Each command reads and validates params.yaml, checks that its outputs can be written, then
calls the stage's function. A StudyError (bad params, missing data, a refused checkpoint,
a full disk) is printed as one message with exit code 1; anything else is a bug and keeps
its traceback. Inside a DVC stage (DVC sets DVC_STAGE) the message also says what DVC removed
before the command ran and how to get it back (`dvc_hint`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from stages.errors import StudyError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Posterior collapse in VAEs: the stages of the DVC study.")

PARAMS = typer.Option(Path("params.yaml"), "--params", help="the params file to validate and use")
ROOT = typer.Option(Path("."), "--root", help="project root holding data/ and reports/")
STUDY = typer.Option("", "--study", help="a named study (profiles/<study>/): its files go to "
                     "data/<study>/ and reports/<study>/ (default: the default study)")
PROGRESS = typer.Option(True, "--progress/--no-progress",
                        help="progress bars (shown only when stderr is a terminal)")


def study_params(params: Path, seed: int):
    """The validated params, refusing a seed outside `seeds`: its files would be outputs of no
    DVC stage (untracked, never in the report)."""
    from stages.errors import ParamsError
    from stages.params import load_params

    p = load_params(params)
    if seed not in p.seeds:
        have = ", ".join(map(str, p.seeds))
        raise ParamsError(f"--seed {seed} is not in `seeds` of {params} ({have}): add it there "
                          "first, so that DVC tracks the run and the report reads it")
    return p


@app.command()
def validate(params: Path = PARAMS, root: Path = ROOT, study: str = STUDY,
             stamp: bool = typer.Option(False, "--stamp", help="then write data/[<study>/]params.valid "
                                        "(the validate stage of dvc.yaml, which every stage that "
                                        "reads params is downstream of)")) -> None:
    """Check params.yaml against the schema and list the ladder with each rung's power."""
    from stages.fsutil import write_text
    from stages.layout import Layout
    from stages.model import build_decoder
    from stages.params import load_params
    from stages.report import role

    from stages.studies import check_grid_pipeline

    layout = Layout(root, study)
    p = load_params(params)
    check_grid_pipeline(root, study, p)
    for name, rung in p.decoders.items():
        decoder = build_decoder(rung.family, rung.decoder, p.encoder.latent_dim)
        print(f"{name}: receptive field {decoder.receptive_field} pixels, "
              f"{role(rung, decoder.uses_z)}; {rung.plain()}")
    print(f"{params}: valid ({len(p.decoders)} {'runs' if p.cells else 'decoders'} x {len(p.seeds)} seeds)")
    if stamp:  # the same bytes for every valid file: a params edit reruns nothing through it
        write_text(layout.params_stamp, "the params file passed `vae-study validate`\n")


@app.command("check-names")
def check_names(params: Path = PARAMS, root: Path = ROOT, study: str = STUDY) -> None:
    """Refuse a params file whose rung names or seeds are not safe in a command line.

    The first command of every train and evaluate stage in dvc.yaml: it has nothing
    interpolated into it, so it runs before DVC hands the shell a command built from a name.
    """
    from stages.layout import Layout
    from stages.paramsfile import check_names as run_check

    Layout(root, study)  # refuses a bad study name
    run_check(params)


@app.command()
def download(out: Path = typer.Option(Path("data/raw"), help="folder for the IDX files"),
             timeout: float = typer.Option(10.0, min=0.1, help="connect timeout per mirror, s")) -> None:
    """Fetch the four MNIST IDX files, verified by SHA-256, trying each source in order."""
    from stages.download import default_sources
    from stages.download import download as run_download

    run_download(out, sources=default_sources(timeout))


@app.command()
def binarize(params: Path = PARAMS, root: Path = ROOT, study: str = STUDY) -> None:
    """Write the binary train / valid / test splits."""
    from stages.binarize import run
    from stages.layout import Layout
    from stages.params import load_params

    config = load_params(params).binarize
    layout = Layout(root, study)
    summary = run(layout.raw, layout.binarized, layout.binarized_summary, config)
    print({k: v for k, v in summary.items()})


@app.command()
def train(decoder: str = typer.Argument(..., help="a key of `decoders` in params.yaml"),
          seed: int = typer.Option(0, min=0, help="training seed"),
          params: Path = PARAMS, root: Path = ROOT, study: str = STUDY,
          progress: bool = PROGRESS) -> None:
    """Train one rung of the decoder ladder (resumes an interrupted run)."""
    from stages.layout import Layout
    from stages.memory import check_training_fits
    from stages.runtime import resolve_device, resolve_precision
    from stages.train import run

    config = study_params(params, seed)
    precision = resolve_precision(config.train.precision, resolve_device())
    if precision.device.type == "cpu":  # a GPU's memory is its own: torch's error names it
        check_training_fits(config.rung(decoder), config.encoder, config.train.batch_size,
                            bf16=precision.name == "bf16")
    run(config, decoder, seed, Layout(root, study), progress=progress)


@app.command()
def evaluate(decoder: str = typer.Argument(..., help="a key of `decoders` in params.yaml"),
             seed: int = typer.Option(0, min=0, help="training seed of the model"),
             params: Path = PARAMS, root: Path = ROOT, study: str = STUDY,
          progress: bool = PROGRESS) -> None:
    """IW log-likelihood and collapse metrics of one trained rung on the test split."""
    from stages.evaluate import run
    from stages.layout import Layout

    run(study_params(params, seed), decoder, seed, Layout(root, study), progress=progress)


@app.command()
def report(params: Path = PARAMS, root: Path = ROOT, study: str = STUDY,
           compare_with: Path | None = typer.Option(
               None, "--compare-with", help="another study's results.csv (from the same code) "
               "to compare this one's KL with, rung by rung")) -> None:
    """Render reports/: the results table, the figures, report.md and index.html."""
    from stages.layout import Layout
    from stages.params import load_params
    from stages.report import run

    run(load_params(params), Layout(root, study), compare_with=compare_with)


@app.command("study-pipeline")
def study_pipeline(name: str = typer.Argument(..., help="the study: profiles/<name>/params.yaml"),
                   root: Path = ROOT) -> None:
    """Write profiles/<name>/dvc.yaml, the default pipeline run with that study's params."""
    from stages.studies import write_pipeline

    print(f"wrote {write_pipeline(root, name)}; run it with `dvc repro profiles/{name}/dvc.yaml`")


@app.command()
def bench(params: Path = PARAMS, root: Path = ROOT,
          out: Path = typer.Option(Path("reports/bench.json"), help="where to write the figures"),
          full_mlp_eval: bool = typer.Option(True, "--full-mlp-eval/--quick",
                                             help="also time the mlp at K=5000 on all test images"),
          peer_dir: Path | None = typer.Option(None, "--peer-dir", help="a copy of jxhe/vae-lagging-encoder "
                                               "(the folder holding modules/): time its gated PixelCNN "
                                               "decoder beside ours (skipped without it)")) -> None:
    """Measure speed against this machine's matmul peak (a benchmark, not a test)."""
    from stages.bench import run
    from stages.errors import OutputError
    from stages.fsutil import ensure_writable_dir
    from stages.layout import Layout
    from stages.params import load_params

    if out.is_dir():  # checked before the benchmark, not after it
        raise OutputError(f"--out {out} is a folder; give the file to write, e.g. {out / 'bench.json'}")
    ensure_writable_dir(out.parent)
    run(load_params(params), Layout(root), out, full_mlp_eval, peer_dir)


LIGHT_COMMANDS = ("check-names",)  # run before every train/evaluate command: no torch import


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
    if sys.argv[1:2] and sys.argv[1] not in LIGHT_COMMANDS:
        from stages.runtime import keep_freed_memory

        keep_freed_memory()
    try:
        app()
    except (StudyError, MemoryError, RuntimeError) as e:
        import os

        if isinstance(e, StudyError):
            message = f"error: {e}"
        elif out_of_memory(e):
            command = sys.argv[1:3] if sys.argv[1] in ("train", "evaluate") else sys.argv[1:2]
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
