"""Where every stage reads and writes, relative to the project root.

dvc.yaml names the same paths (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data/raw"

    @property
    def binarized(self) -> Path:
        return self.root / "data/binarized/mnist.npz"

    @property
    def binarized_summary(self) -> Path:
        return self.root / "data/binarized/summary.json"

    def model(self, rung: str, seed: int) -> Path:
        return self.root / f"data/models/{rung}/seed{seed}.pt"

    def history(self, rung: str, seed: int) -> Path:
        """DVCLive's folder of the training history: metrics.json and plots/metrics/*.tsv."""
        return self.root / f"data/history/{rung}/seed{seed}"

    def history_metrics(self, rung: str, seed: int) -> Path:
        return self.history(rung, seed) / "metrics.json"

    def history_plots(self, rung: str, seed: int) -> Path:
        return self.history(rung, seed) / "plots/metrics"

    def metrics(self, rung: str, seed: int) -> Path:
        return self.root / f"data/metrics/{rung}/seed{seed}.json"

    def eval_dir(self, rung: str, seed: int) -> Path:
        return self.root / f"data/eval/{rung}/seed{seed}"

    def k_curve(self, rung: str, seed: int) -> Path:
        return self.eval_dir(rung, seed) / "k_curve.csv"

    def latent_dims(self, rung: str, seed: int) -> Path:
        return self.eval_dir(rung, seed) / "latent_dims.csv"

    def eval_images(self, rung: str, seed: int) -> Path:
        return self.eval_dir(rung, seed) / "images.npz"

    def eval_info(self, rung: str, seed: int) -> Path:
        return self.eval_dir(rung, seed) / "info.json"

    def per_image(self, rung: str, seed: int) -> Path:
        """test_index, log_px_iw_nats, elbo_nats: one row per scored test image."""
        return self.eval_dir(rung, seed) / "per_image.csv"

    def scratch(self, rung: str, seed: int) -> Path:
        """Resume state of an unfinished training run: outside DVC's outputs, git-ignored."""
        return self.root / f".scratch/train/{rung}-seed{seed}.pt"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def reference(self) -> Path:
        return self.root / "reference/published.csv"
