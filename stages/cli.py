"""The `vae-study` command: one subcommand per DVC stage, plus validate and bench.

Each command reads and validates params.yaml, checks that its outputs can be written, then
calls the stage's function. A StudyError (bad params, missing data, a refused checkpoint,
a full disk) is printed as one message with exit code 1; anything else is a bug and keeps
its traceback.
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


@app.command()
def validate(params: Path = PARAMS) -> None:
    """Check params.yaml against the schema and list the ladder with each rung's power."""
    from stages.model import build_decoder
    from stages.params import load_params
    from stages.report import role

    p = load_params(params)
    for name, rung in p.decoders.items():
        decoder = build_decoder(rung.family, rung.decoder, p.encoder.latent_dim)
        print(f"{name}: receptive field {decoder.receptive_field} pixels, "
              f"{role(rung, decoder.uses_z)}; {rung.plain()}")
    print(f"{params}: valid ({len(p.decoders)} decoders x {len(p.seeds)} seeds)")


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
    from stages.params import load_params
    from stages.train import run

    run(load_params(params), decoder, seed, Layout(root, study), progress=progress)


@app.command()
def evaluate(decoder: str = typer.Argument(..., help="a key of `decoders` in params.yaml"),
             seed: int = typer.Option(0, min=0, help="training seed of the model"),
             params: Path = PARAMS, root: Path = ROOT, study: str = STUDY,
          progress: bool = PROGRESS) -> None:
    """IW log-likelihood and collapse metrics of one trained rung on the test split."""
    from stages.evaluate import run
    from stages.layout import Layout
    from stages.params import load_params

    run(load_params(params), decoder, seed, Layout(root, study), progress=progress)


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
    from stages.layout import Layout
    from stages.params import load_params

    run(load_params(params), Layout(root), out, full_mlp_eval, peer_dir)


def main() -> None:
    from stages.runtime import keep_freed_memory

    keep_freed_memory()
    try:
        app()
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
