"""The benchmark runs end to end on a tiny study and its figures are consistent with each other.

Speed itself is not asserted here (that is what `vae-study bench` reports); this proves the
command works and that every rate is what it says: a ratio to the peak of the same run.
"""

from __future__ import annotations

import json

import pytest
from helpers import TINY_PARAMS, tiny_params

from stages import bench
from stages.layout import Layout


def test_bench_gives_every_rate_as_a_ratio_to_the_peak_of_the_same_run(tmp_path, capsys):
    params = tiny_params(train={**TINY_PARAMS["train"], "precision": "auto"},
                         decoders={**TINY_PARAMS["decoders"], "mlp": {"family": "mlp", "hidden": [16]}})
    out = tmp_path / "reports" / "bench.json"

    bench.run(params, Layout(tmp_path), out, full_mlp_eval=False)
    result = json.loads(out.read_text())

    peak = result["peak_gflops"]["bf16"]
    assert peak > 0 and result["peak_gflops"]["fp32"] > 0
    assert set(result["train"]) == set(params.decoders)
    for row in [*result["train"].values(), *result["train_variants"].values()]:
        assert row["gflops"] == pytest.approx(row["images_per_s"] / params.train.batch_size
                                              * row["gflop_per_step"])
        assert row["ratio_to_bf16_peak"] == pytest.approx(row["gflops"] / peak)
    wide = result["train_variants"]["pixelcnn_2, kernel_size 5"]
    assert wide["gflop_per_step"] > result["train"]["pixelcnn_2"]["gflop_per_step"]

    parts = result["step_breakdown"]
    assert parts["rung"] == "pixelcnn_2"  # the deepest conditional PixelCNN of the ladder
    assert 0 < parts["convolution_ms"] < parts["profiled_step_ms"]
    assert parts["convolution_share"] == pytest.approx(parts["convolution_ms"] / parts["profiled_step_ms"])
    assert parts["convolution_ratio_to_bf16_peak"] == pytest.approx(parts["convolution_gflops"] / peak)
    assert parts["elementwise_pass"]["shape"] == [params.train.batch_size, 4, 28, 28]
    assert parts["elementwise_pass"]["gb_per_s"] > 0

    assert set(result["evaluate"]) == {"mlp", "pixelcnn_2"}
    assert all(row["decoder_evals_per_s"] > 0 for row in result["evaluate"].values())
    assert result["peak_rss_mib_after_evaluate"] >= result["peak_rss_mib_after_train"] > 0
    assert "mlp_full_eval" not in result  # --quick
    assert "step of pixelcnn_2" in capsys.readouterr().out


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
