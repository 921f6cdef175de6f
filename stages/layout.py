"""Where every stage reads and writes, relative to the project root.

dvc.yaml names the same paths (a test keeps the two in step). A named study (`study="long"`,
the pipeline in profiles/long/) keeps everything it computes under data/<study>/ and its report
under reports/<study>/, so it never touches the default study's files; only the downloaded
MNIST files (data/raw) are shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from stages.errors import ParamsError

STUDY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DEFAULT_FOLDERS = ("raw", "binarized", "models", "history", "metrics", "eval", "figures")


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")
    study: str = ""  # "": the default study; a name: data/<name>/ and reports/<name>/

    def __post_init__(self) -> None:
        if self.study and (not STUDY_NAME.match(self.study) or self.study in DEFAULT_FOLDERS):
            raise ParamsError(f"study name {self.study!r}: use lower-case letters, digits and _, "
                              "starting with a letter, and not the name of one of the default "
                              f"study's folders in data/ ({', '.join(DEFAULT_FOLDERS)})")

    @property
    def data(self) -> Path:
        return self.root / "data" / self.study if self.study else self.root / "data"

    @property
    def params_stamp(self) -> Path:
        """Written by the validate stage once the params file passed: every stage that reads
        params is downstream of it. Its bytes never change, so it reruns nothing by itself."""
        return self.data / "params.valid"

    @property
    def raw(self) -> Path:
        return self.root / "data/raw"

    @property
    def binarized(self) -> Path:
        return self.data / "binarized/mnist.npz"

    @property
    def binarized_summary(self) -> Path:
        return self.data / "binarized/summary.json"

    def model(self, rung: str, seed: int) -> Path:
        return self.data / f"models/{rung}/seed{seed}.pt"

    def history(self, rung: str, seed: int) -> Path:
        """DVCLive's folder of the training history: metrics.json and plots/metrics/*.tsv."""
        return self.data / f"history/{rung}/seed{seed}"

    def history_metrics(self, rung: str, seed: int) -> Path:
        return self.history(rung, seed) / "metrics.json"

    def history_plots(self, rung: str, seed: int) -> Path:
        return self.history(rung, seed) / "plots/metrics"

    def metrics(self, rung: str, seed: int) -> Path:
        return self.data / f"metrics/{rung}/seed{seed}.json"

    def eval_dir(self, rung: str, seed: int) -> Path:
        return self.data / f"eval/{rung}/seed{seed}"

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
        return self.root / ".scratch" / self.study / f"train/{rung}-seed{seed}.pt"

    @property
    def reports(self) -> Path:
        return self.root / "reports" / self.study if self.study else self.root / "reports"

    @property
    def reference(self) -> Path:
        return self.root / "reference/published.csv"

    @property
    def remedies(self) -> Path:
        """Published KL and NLL of the remedies of collapse, beside a grid study's cells."""
        return self.root / "reference/remedies.csv"
