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


def test_the_training_length_table_sets_each_rungs_kl_beside_the_other_study_with_a_welch_change(tmp_path):
    header = "rung,role,power,uses_z,n_seeds,kl_nats,kl_nats_std\n"
    (tmp_path / "reports/long").mkdir(parents=True)
    (tmp_path / "reports/results.csv").write_text(
        header + "a,trend,1,True,3,5.0,1.0\nb,trend,2,True,3,2.0,0.5\nb_alone,no z,2,False,3,0.0,0.0\n"
        "d,trend,3,True,3,1.0,0.1\n")
    assert answer.training_length_table(tmp_path) is None  # no long study committed
    (tmp_path / "reports/long/results.csv").write_text(
        header + "b,trend,2,True,3,2.0,0.5\na,trend,1,True,3,7.0,1.0\nb_alone,no z,2,False,3,0.0,0.0\n")
    rows = answer.training_length_table(tmp_path).splitlines()[2:]
    # in order of power, rungs with z that both studies trained; d (default only) and the twin left out
    assert [r.split(" | ")[0] for r in rows] == ["| `a`", "| `b`"]
    # 7 - 5 = 2, standard error sqrt(1/3 + 1/3), Welch df = 4, t(0.975, 4) = 2.776: [-0.27, +4.27]
    assert rows[0] == "| `a` | trend | 5.00 [2.52, 7.48] | 7.00 [4.52, 9.48] | +2.00 [-0.27, +4.27] |"
    assert rows[1].endswith("| +0.00 [-1.13, +1.13] |")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    shutil.copytree(REPO / "profiles/long", tmp_path / "profiles/long")
    (tmp_path / "reports/claims.json").write_text(json.dumps(
        {"abstract": {"sentences": ["It falls."], "scope": "Scope: here.", "text": "It falls."}}))
    block = answer.render(tmp_path)
    assert "the long one (early-stopped, patience" in block and rows[0] in block
