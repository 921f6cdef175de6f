"""The command-line options every stage command shares (`vae-study <stage> --help`)."""

from __future__ import annotations

from pathlib import Path

import typer

PARAMS = typer.Option(Path("params.yaml"), "--params", help="the params file to validate and use")
ROOT = typer.Option(Path("."), "--root", help="project root holding data/ and reports/")
STUDY = typer.Option("", "--study", help="a named study (profiles/<study>/): its files go to "
                     "data/<study>/ and reports/<study>/ (default: the default study)")
PROGRESS = typer.Option(True, "--progress/--no-progress",
                        help="progress bars (shown only when stderr is a terminal)")
