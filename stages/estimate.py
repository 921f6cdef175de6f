"""`vae-study estimate`: how long a study's `dvc repro` takes on this machine, before running it.

A study's cost is almost all training steps and importance-weighted decoder evaluations, so it
is predicted from those two timed on this machine, per rung, in the precision its stages use:

    train (per run)    = epochs x (ceil(n_train / batch) x t_step + ceil(n_valid / max(batch, 256)) x t_valid)
    evaluate (per run) = t_eval(n0) + (n_test - n0) x K / (decoder evaluations per second in IW)

with t_step one Adam step at the study's batch size and t_valid one validation ELBO batch of
max(batch, 256) images in the training precision, as the train stage validates (both
the fastest of a few timed calls, `stages.bench.best_seconds`), and t_eval(n0) the evaluate
stage's own function on n0 = `evaluate.batch_size` test images: what does not grow with the test
images (the probe's and the MI's posteriors of the training images, the prior samples, drawn
pixel by pixel for an autoregressive decoder) and the first n0 images. Every run of a rung costs the
same, so a rung's time is its seeds times one run. What the model leaves out is said beside the
number: early stopping ends runs before the cap (the cap is the upper bound), the aggressive
objective's encoder inner loop adds steps the model does not count (a lower bound), and DVC's
own start-up is a few seconds per stage (`STAGE_OVERHEAD_S`). The CPU the work runs on changes
these times several-fold (docs/performance.md), which is why they are measured, not tabulated.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import typer

from stages.bench import best_seconds, eval_rate, images, train_step_rate
from stages.data import Split, load_splits
from stages.layout import Layout
from stages.model import build_model
from stages.options import PARAMS, ROOT
from stages.params import N_MNIST_TEST, N_MNIST_TRAIN, StudyParams
from stages.runtime import Precision, generator, resolve_device, resolve_precision

STAGE_OVERHEAD_S = 4.0  # DVC and Python start-up per train or evaluate stage (measured: 3-5 s)
FIXED_S = 60.0  # validate, download, binarize and report together, from a fresh clone
EVAL_IMAGES = 2  # test images per timed IW call (x K decoder evaluations)
# stages.train validates in batches of max(train.batch_size, 256) (a literal there: naming it in
# train.py would rerun every train stage of every study)
VALID_BATCH_MIN = 256


@dataclasses.dataclass(frozen=True)
class Timing:
    """What one run of a rung costs on this machine, measured."""
    step_s: float  # one training step at the study's batch size
    valid_s: float  # one validation ELBO batch
    evals_per_s: float  # (image, sample) decoder evaluations per second inside the IW estimator
    eval_base_s: float  # the whole evaluation of `eval_images` test images
    eval_images: int


@dataclasses.dataclass(frozen=True)
class Estimate:
    rung: str
    seeds: int
    epochs: int
    train_s: float  # per run
    evaluate_s: float  # per run
    bound: str  # "" (as predicted), "upper" (early stopping may end it sooner), "lower"

    @property
    def total_s(self) -> float:
        return self.seeds * (self.train_s + self.evaluate_s + 2 * STAGE_OVERHEAD_S)


def n_train(params: StudyParams) -> int:
    b = params.binarize
    return b.train_subset if b.train_subset is not None else N_MNIST_TRAIN - b.valid_size


def valid_batch(params: StudyParams) -> int:
    return max(params.train.batch_size, VALID_BATCH_MIN)


def predict(params: StudyParams, timings: dict[str, Timing]) -> list[Estimate]:
    """Each run's train and evaluate seconds from the timings of its rung (the equations above)."""
    t, e = params.train, params.evaluate
    steps = math.ceil(n_train(params) / t.batch_size)
    valid_batches = math.ceil((t.valid_subset or params.binarize.valid_size) / valid_batch(params))
    n_test = e.n_test if e.n_test is not None else N_MNIST_TEST
    out = []
    for name, rung in params.decoders.items():
        timing = timings[name]
        bound = ("lower" if rung.objective.aggressive else "upper" if t.patience is not None else "")
        out.append(Estimate(name, len(params.seeds), t.epochs,
                            t.epochs * (steps * timing.step_s + valid_batches * timing.valid_s),
                            timing.eval_base_s + max(n_test - timing.eval_images, 0) * e.k / timing.evals_per_s,
                            bound))
    return out


def valid_seconds(model, x: torch.Tensor, precision: Precision) -> float:
    model = precision.model(model).eval()
    x = precision.batch(x)

    def run():
        with torch.no_grad(), precision.autocast():
            model.elbo_terms(x, generator(0, precision.device))

    return best_seconds(run, repeats=3, warmup=1)


def evaluation_seconds(model, params: StudyParams, precision: Precision) -> tuple[float, int]:
    """(seconds, n0): the evaluate stage's function on n0 = evaluate.batch_size synthetic test
    images, against as many synthetic training images as the probe and the MI use."""
    from stages.evaluate import evaluate_model

    n0, n_probe = params.evaluate.batch_size, params.evaluate.probe_train_size or n_train(params)

    def split(n: int) -> Split:  # synthetic binary images (n,1,28,28), labels 0-9
        return Split(images(None, n), torch.arange(n) % 10)

    config = dataclasses.replace(params.evaluate, n_test=None)  # every image of the split given
    test, train = split(n0), split(n_probe)
    start = time.perf_counter()
    evaluate_model(model, test, train, config, precision, progress=False)
    return time.perf_counter() - start, n0


def measure(params: StudyParams, layout: Layout, progress: bool = True) -> dict[str, Timing]:
    """Time every rung's step, validation pass and IW evaluation on this machine (random weights:
    a trained network costs the same arithmetic)."""
    device = resolve_device()
    train_p = resolve_precision(params.train.precision, device)
    eval_p = resolve_precision(params.evaluate.precision, device)
    splits = load_splits(layout.binarized) if layout.binarized.exists() else None
    x = images(splits, params.train.batch_size)  # (B, 1, 28, 28)
    x_valid = images(splits, valid_batch(params), "valid")  # (max(B, 256), 1, 28, 28)
    out, seen = {}, {}
    for name, rung in params.decoders.items():
        key = repr((rung.family, rung.decoder))  # a step costs the same under every objective
        if key not in seen:
            torch.manual_seed(0)
            step_s = train_step_rate(build_model(rung, params.encoder), x, train_p)[0]
            valid_s = valid_seconds(build_model(rung, params.encoder), x_valid, train_p)  # as train does
            rate = eval_rate(build_model(rung, params.encoder), x[:EVAL_IMAGES], params.evaluate.k,
                             params.evaluate.chunk_size, eval_p)
            base_s, n0 = evaluation_seconds(build_model(rung, params.encoder), params, eval_p)
            seen[key] = Timing(step_s, valid_s, rate, base_s, n0)
            if progress:
                print(f"  {name}: step {1000 * step_s:.0f} ms, valid batch {1000 * valid_s:.0f} ms, "
                      f"{rate:,.0f} decoder evaluations/s, evaluation of {n0} images {base_s:.1f} s",
                      flush=True)
        out[name] = seen[key]
    return out


def table(estimates: list[Estimate], budget_min: float) -> str:
    """The runs, costliest first, in minutes, and whether the whole study fits `budget_min`."""
    said = {"upper": "at most (early stopping)", "lower": "at least (inner loop not counted)", "": ""}
    rows = ["| rung | seeds | epochs | train per run (min) | evaluate per run (min) | all seeds (min) | bound |",
            "|---|---:|---:|---:|---:|---:|---|"]
    rows += [f"| {e.rung} | {e.seeds} | {e.epochs} | {e.train_s / 60:.1f} | {e.evaluate_s / 60:.1f} | "
             f"{e.total_s / 60:.1f} | {said[e.bound]} |" for e in sorted(estimates, key=lambda e: -e.total_s)]
    total = study_minutes(estimates)
    verdict = "fits" if total <= budget_min else "does NOT fit"
    return "\n".join(rows) + (f"\n\nPredicted `dvc repro` from scratch: {total:.0f} min on this machine, "
                              f"which {verdict} a {budget_min:g}-minute budget.")


def study_minutes(estimates: list[Estimate]) -> float:
    return (sum(e.total_s for e in estimates) + FIXED_S) / 60


def command(params: Path = PARAMS, root: Path = ROOT,
            budget_min: float = typer.Option(150.0, "--budget-min", help="the time the study must fit")) -> None:
    """Predict a study's `dvc repro` time on this machine from timed steps and evaluations."""
    from stages.params import load_params

    p = load_params(params)
    print(f"timing every rung of {params} ({torch.get_num_threads()} threads):")
    print(table(predict(p, measure(p, Layout(root))), budget_min))
