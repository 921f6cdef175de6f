"""Stage `validate`: the whole params file against the schema, before any stage that reads it.

`vae-study validate` lists the ladder with each rung's power (its causal receptive field) and
role; with `--stamp` it writes data/[<study>/]params.valid, the same bytes for every valid file,
which every stage that reads params is downstream of (through binarize): `dvc repro` and `dvc
exp run` stop here on a bad file, and a params edit reruns nothing through this stage.
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages.fsutil import write_text
from stages.layout import Layout
from stages.model import build_decoder
from stages.options import PARAMS, ROOT, STUDY
from stages.params import load_params
from stages.studies import check_grid_pipeline


def command(params: Path = PARAMS, root: Path = ROOT, study: str = STUDY,
            stamp: bool = typer.Option(False, "--stamp", help="then write data/[<study>/]params.valid "
                                       "(the validate stage of dvc.yaml, which every stage that "
                                       "reads params is downstream of)")) -> None:
    """Check params.yaml against the schema and list the ladder with each rung's power."""
    layout = Layout(root, study)
    p = load_params(params)
    check_grid_pipeline(root, study, p)
    for name, rung in p.decoders.items():
        decoder = build_decoder(rung.family, rung.decoder, p.encoder.latent_dim)
        print(f"{name}: receptive field {decoder.receptive_field} pixels, {rung.role}; {rung.plain()}")
    print(f"{params}: valid ({len(p.decoders)} {'runs' if p.cells else 'decoders'} x {len(p.seeds)} seeds)")
    if stamp:  # the same bytes for every valid file: a params edit reruns nothing through it
        write_text(layout.params_stamp, "the params file passed `vae-study validate`\n")
