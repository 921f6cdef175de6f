"""The README states the answer the committed reports compute, and nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stages import answer
from stages.errors import DataError
from stages.params import load_params

REPO = Path(__file__).resolve().parents[1]


def test_the_readme_states_what_the_committed_reports_say():
    block = answer.block_of((REPO / "README.md").read_text())
    assert block == answer.render(REPO), "README.md's answer is stale: run `vae-study answer`"
    found = json.loads((REPO / "reports/claims.json").read_text())
    assert found["abstract"]["text"] in block and found["abstract"]["scope"] in block


def test_the_answer_command_rewrites_only_its_block_and_refuses_a_readme_without_one(tmp_path):
    shutil.copytree(REPO / "reports", tmp_path / "reports")
    (tmp_path / "README.md").write_text(f"# T\n\nbefore\n\n{answer.BEGIN}\nold\n{answer.END}\n\nafter\n")
    answer.command(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# T\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "\nold\n" not in text
    assert answer.block_of(text) == answer.render(tmp_path)
    (tmp_path / "README.md").write_text("# no block\n")
    with pytest.raises(DataError, match="no answer block"):
        answer.command(tmp_path)


def test_the_cross_study_table_reads_each_studys_top_rungs(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/results.csv").write_text(
        "rung,role,power,n_seeds,kl_nats,kl_nats_std,nll_iw_nats,nll_iw_nats_std\n"
        "a,trend,1,3,5.0,1.0,90.0,0.5\nb,trend,2,3,2.0,0.5,88.0,0.5\nc,trend,3,3,2.19,0.58,87.0,0.5\n"
        "c_alone,no z,3,3,0.0,0.0,88.0,0.5\n")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text().replace("epochs: 5", "epochs: 7", 1))
    table = answer.cross_study_table(tmp_path)
    assert "| default (7 epochs) | `c` | 3 | 2.19 [0.75, 3.63] | 87.00 [85.76, 88.24] | n/a |" in table
    assert "`b`" in table and "`a`" not in table and "c_alone" not in table
    (tmp_path / "reports/long").mkdir()
    shutil.copy(tmp_path / "reports/results.csv", tmp_path / "reports/long/results.csv")
    (tmp_path / "profiles/long").mkdir(parents=True)
    shutil.copy(REPO / "profiles/long/params.yaml", tmp_path / "profiles/long/params.yaml")
    train = load_params(REPO / "profiles/long/params.yaml").train
    assert (f"| long (early-stopped, patience {train.patience}, cap {train.epochs} epochs) | `c` |"
            in answer.cross_study_table(tmp_path))


def test_every_sentence_of_the_committed_reports_is_short_enough_to_read():
    """No finding over 60 words (a list of more numbers belongs in a table), nor any sentence of
    the answer."""
    found = json.loads((REPO / "reports/claims.json").read_text())
    long = {name: len(claim["text"].split()) for name, claim in found.items()
            if name != "abstract" and len(claim["text"].split()) > 60}
    assert long == {}
    assert all(len(s.split()) <= 60 for s in found["abstract"]["sentences"])
