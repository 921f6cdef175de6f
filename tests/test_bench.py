"""The benchmark runs end to end on a tiny study and its figures are consistent with each other.

Speed itself is not asserted here (that is what `vae-study bench` reports); this proves the
command works and that every rate is what it says: a ratio to the peak of the same run.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import TINY_PARAMS, tiny_params

from stages import bench, peer
from stages.layout import Layout
from stages.runtime import resolve_precision


def test_bench_gives_every_rate_as_a_ratio_to_its_precisions_peak_of_the_same_run(tmp_path, capsys):
    params = tiny_params(train={**TINY_PARAMS["train"], "precision": "auto"},
                         decoders={**TINY_PARAMS["decoders"], "mlp": {"family": "mlp", "hidden": [16]}})
    out = tmp_path / "reports" / "bench.json"

    bench.run(params, Layout(tmp_path), out, full_mlp_eval=False)
    result = json.loads(out.read_text())

    assert result["peak_gflops"]["bf16"] > 0 and result["peak_gflops"]["fp32"] > 0
    peak = result["peak_gflops"][resolve_precision("auto", torch.device("cpu")).name]  # the train stage's
    assert set(result["train"]) == set(params.decoders)
    for row in [*result["train"].values(), *result["train_variants"].values()]:
        assert row["gflops"] == pytest.approx(row["images_per_s"] / params.train.batch_size
                                              * row["gflop_per_step"])
        assert row["ratio_to_peak"] == pytest.approx(row["gflops"] / peak)
    wide = result["train_variants"]["pixelcnn_2, kernel_size 5"]
    assert wide["gflop_per_step"] > result["train"]["pixelcnn_2"]["gflop_per_step"]

    parts = result["step_breakdown"]
    assert parts["rung"] == "pixelcnn_2"  # the deepest conditional PixelCNN of the ladder
    assert 0 < parts["convolution_ms"] < parts["profiled_step_ms"]
    assert parts["convolution_share"] == pytest.approx(parts["convolution_ms"] / parts["profiled_step_ms"])
    assert parts["convolution_ratio_to_peak"] == pytest.approx(parts["convolution_gflops"] / peak)
    assert parts["elementwise_pass"]["shape"] == [params.train.batch_size, 4, 28, 28]
    assert parts["elementwise_pass"]["gb_per_s"] > 0

    assert set(result["evaluate"]) == {"mlp", "pixelcnn_2"}
    assert all(row["decoder_evals_per_s"] > 0 for row in result["evaluate"].values())
    assert result["peak_rss_mib_after_evaluate"] >= result["peak_rss_mib_after_train"] > 0
    assert "mlp_full_eval" not in result  # --quick
    assert "step of pixelcnn_2" in capsys.readouterr().out



def test_the_matmul_peak_grows_its_product_until_one_takes_long_enough_and_no_further():
    timed = []

    def seconds_at_1_gflops(n: int) -> float:  # bf16 on an AVX2-only CPU runs at about this rate
        timed.append(n)
        return 2 * n**3 / 1e9

    assert bench.matmul_size(seconds_at_1_gflops) == 512  # 256: 34 ms, 512: 268 ms >= 50 ms
    assert timed == [256, 512]
    assert bench.matmul_size(lambda n: 2 * n**3 / 1e12) == 2048  # a native kernel: the cap
    assert bench.matmul_peak_gflops(torch.bfloat16) > 0

PEER_DECODER = '''
import torch
from torch import nn


class PixelCNNDecoder(nn.Module):
    """The peer's interface (args in, reconstruct_error(x, z) -> (B, K) nats out), tiny inside."""

    def __init__(self, args):
        super().__init__()
        self.z = nn.Linear(args.nz, 28 * 28)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def reconstruct_error(self, x, z):
        logits = self.conv(x) + self.z(z[:, 0]).view(-1, 1, 28, 28)
        return nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)[:, None]
'''


def test_peer_comparison_times_ours_plain_and_compiled_beside_the_peer_and_skips_without_it(tmp_path, capsys):
    cpu, fp32 = (resolve_precision(p, torch.device("cpu")) for p in ("auto", "fp32"))
    assert peer.compare(None, 4, 8, cpu, fp32) == {"skipped": "no --peer-dir given"}
    missing = peer.compare(tmp_path, 4, 8, cpu, fp32)
    assert "no modules/decoders/dec_pixelcnn.py under" in missing["skipped"]
    assert "peer comparison skipped" in capsys.readouterr().out

    (tmp_path / "modules" / "decoders").mkdir(parents=True)
    for init in ("modules/__init__.py", "modules/decoders/__init__.py"):
        (tmp_path / init).write_text("")
    (tmp_path / "modules" / "decoders" / "dec_pixelcnn.py").write_text(PEER_DECODER)
    result = peer.compare(tmp_path, 4, 8, cpu, fp32)
    rates = result["images_per_s"]
    compiled = f"ours, {cpu.name}, torch.compile (not used in training)"
    if shutil.which("c++") or shutil.which("g++"):  # inductor's CPU backend needs a C++ compiler
        assert set(rates) == {f"ours, {cpu.name}", "ours, fp32", "peer, fp32 (as shipped)",
                              "peer, bf16 autocast", compiled}
        assert result["compilation"]["first_step_s"] > 0
        assert result["ours_compiled_over_ours"] == pytest.approx(rates[compiled]
                                                                  / rates[f"ours, {cpu.name}"])
    else:
        assert "skipped" in result["compilation"] and compiled not in rates
    assert all(r > 0 for r in rates.values())
    assert result["ours_over_peer_as_shipped"] == pytest.approx(rates[f"ours, {cpu.name}"]
                                                                / rates["peer, fp32 (as shipped)"])
    assert result["ours_over_peer_same_precision"] == pytest.approx(rates[f"ours, {cpu.name}"]
                                                                    / rates["peer, bf16 autocast"])


def test_bench_refuses_an_output_folder_before_benchmarking(tmp_path):
    """`--out reports` (a folder) used to fail only after the whole benchmark had run."""
    import time

    from helpers import sh

    (tmp_path / "reports").mkdir()
    start = time.time()
    proc = sh(tmp_path, "vae-study", "bench", "--quick", "--out", str(tmp_path / "reports"),
              "--params", str(tmp_path / "missing.yaml"), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"--out {tmp_path / 'reports'} is a folder" in proc.stderr
    assert time.time() - start < 60 and not list((tmp_path / "reports").iterdir())
