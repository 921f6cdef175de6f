"""Stage `train@<decoder>-<seed>`: fit one VAE of the ladder by maximizing its objective.

The objective is the ELBO (Kingma & Welling 2014, Eq. 3) unless the rung's objective options
name a remedy of posterior collapse: KL warm-up, free bits, beta < 1 or aggressive
inference-network training (`stages.objectives`). The ELBO reported (train and valid) is always
the true one, beta = 1 and lambda = 0.

Adam with a constant learning rate; the validation ELBO is measured every epoch with a fixed
noise draw and the best-validation weights are the stage's output. `train.epochs` is a cap:
with `train.patience` set, training stops early once `patience` epochs in a row have not
beaten the best validation ELBO by more than `train.min_delta_nats` (early stopping,
Prechelt 1998); the best epoch is the last one that did. Every epoch's random
numbers come from generators seeded by (seed, epoch), and the last finished epoch is saved to
a scratch checkpoint outside DVC's outputs: an interrupted run resumes there and ends with the
same weights as an uninterrupted one (a resume file that is damaged or crafted is refused,
naming what is wrong, before any of it is used). The scratch state is removed on success.
Every epoch's row of the history is logged through DVCLive (`stages.live`), which is what
`dvc exp show`, `dvc plots` and the report read.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import typer
from tqdm import tqdm

from stages.checkpoint import check_resume_state, describe, load_checkpoint, model_state, save_checkpoint
from stages.data import Split, load_splits
from stages.errors import TrainingDiverged
from stages.fsutil import ensure_writable_dir
from stages.layout import Layout
from stages.options import PARAMS, PROGRESS, ROOT, STUDY
from stages.live import EpochLog
from stages.model import VAE, EncoderConfig, build_model
from stages.objectives import AggressivePhase, Objective, StepContext, encoder_inner_loop, step_only, valid_mi
from stages.params import Rung, StudyParams, TrainConfig, load_run_params
from stages.runtime import (Precision, derive_seed, generator, resolve_device, resolve_precision,
                            seed_everything)
from stages.schema import to_plain

VALID_STREAM = 1_000_003  # generator streams: (seed, epoch) for training, (seed, VALID) for valid


@torch.no_grad()
def mean_elbo(model: VAE, split: Split, precision: Precision, batch_size: int,
              seed: int) -> dict[str, float]:
    """Mean one-sample ELBO, KL and reconstruction over a split, fixed noise.  Nats."""
    model.eval()
    g = generator(derive_seed(seed, VALID_STREAM), precision.device)
    g_cpu = generator(derive_seed(seed, VALID_STREAM, 1))
    sums = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(split), batch_size):
        x = precision.batch(split.images(slice(start, start + batch_size), g_cpu))
        with precision.autocast():
            t = model.elbo_terms(x, generator=g)
        sums += torch.stack([t.elbo.sum(), t.kl.sum(), -t.log_px_z.sum()]).double().cpu()
    elbo, kl, rec = (sums / len(split)).tolist()
    return {"elbo": elbo, "kl": kl, "rec": rec}


@dataclass(frozen=True)
class TrainRun:
    """What a training run is: the rung, its encoder, the training settings, the seed, and
    the data it trains on (`data_id`, the binarized file's digest)."""

    rung: Rung
    encoder: EncoderConfig
    config: TrainConfig
    seed: int
    data_id: str = ""

    def fingerprint(self) -> str:
        """Identifies the run, so resume state from another run is never used."""
        text = repr((describe(self.rung, self.encoder), to_plain(self.config), self.seed, self.data_id))
        return hashlib.sha256(text.encode()).hexdigest()


def train_rung(
    run: TrainRun,
    train: Split,
    valid: Split,
    precision: Precision,
    resume_path: Path | None = None,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train one rung; return the best-validation checkpoint state and the epoch history.

    `log(row)` receives every epoch's history row as it is finished (the rows a resumed run
    already had first, so a fresh logger ends with the whole history)."""
    rung, config, seed = run.rung, run.config, run.seed
    seed_everything(seed)
    model = precision.model(build_model(rung, run.encoder))
    ctx = StepContext(model, torch.optim.Adam(model.parameters(), lr=config.lr), Objective.of(rung.objective),
                      train, config.batch_size, precision)
    optimizer, objective = ctx.optimizer, ctx.objective
    phase = AggressivePhase(on=rung.objective.aggressive)
    valid = valid.head(config.valid_subset)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    run_id = run.fingerprint()
    identity = {**describe(rung, run.encoder), "train": to_plain(config), "seed": seed}

    start_epoch, best, history = 1, None, []
    if resume_path is not None and resume_path.exists():
        state = load_checkpoint(resume_path)
        if state.get("run_id") == run_id:
            check_resume_state(state, resume_path, config.epochs, model, optimizer)
            start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
            phase = AggressivePhase(**state.get("aggressive", phase.plain()))
            print(f"resuming {rung.name} seed {seed} after epoch {state['epoch']} ({resume_path})")
            for row in history if log is not None else ():
                log(row)
        else:
            print(f"ignoring {resume_path}: it belongs to a run with other settings")

    for epoch in range(start_epoch, config.epochs + 1):
        if best is not None and config.converged(epoch - 1, best["epoch"]):
            break  # a resumed run that had already converged
        t0 = time.perf_counter()
        model.train()
        g_cpu = generator(derive_seed(seed, epoch))
        g = generator(derive_seed(seed, epoch, 1), precision.device)
        order = torch.randperm(len(train), generator=g_cpu)
        g_inner_cpu = generator(derive_seed(seed, epoch, 2))  # the aggressive phase's fresh batches
        g_inner = generator(derive_seed(seed, epoch, 3), precision.device)
        aggressive, inner_steps = phase.on, 0
        sums = torch.zeros(3, dtype=torch.float64)
        bar = tqdm(range(steps_per_epoch), desc=f"{rung.name} s{seed} epoch {epoch}/{config.epochs}",
                   disable=None if progress else True, mininterval=1.0, leave=False)
        for i in bar:
            step = (epoch - 1) * steps_per_epoch + i
            x = precision.batch(train.images(order[i * config.batch_size:(i + 1) * config.batch_size], g_cpu))
            if aggressive:  # the encoder first, to convergence, then the decoder alone
                inner_steps += encoder_inner_loop(ctx, rung.objective, step, g_inner_cpu, g_inner)
            with precision.autocast():
                t = model.elbo_terms(x, generator=g)
            loss = objective.loss(t.log_px_z, t.kl_per_dim, step)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"{rung.name} seed {seed}: loss is {loss.item()} at epoch {epoch}, step {i + 1} "
                    f"of {steps_per_epoch}; stopped without writing a checkpoint "
                    f"(try a lower train.lr)")
            if aggressive:
                step_only(model, model.decoder, optimizer, loss)
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            batch = torch.stack([t.elbo.sum(), t.kl.sum(), -t.log_px_z.sum()]).detach().double().cpu()
            sums += batch
            if i % 20 == 0:
                bar.set_postfix(elbo=f"{batch[0].item() / len(x):.2f}", kl=f"{batch[1].item() / len(x):.2f}")
        bar.close()
        train_elbo, train_kl, train_rec = (sums / len(train)).tolist()
        v = mean_elbo(model, valid, precision, max(config.batch_size, 256), seed)
        row = {"epoch": epoch, "images_seen": epoch * len(train), "train_elbo_nats": train_elbo, "train_kl_nats": train_kl,
               "train_rec_nats": train_rec, "valid_elbo_nats": v["elbo"], "valid_kl_nats": v["kl"],
               "valid_rec_nats": v["rec"], "beta": objective.beta(epoch * steps_per_epoch),
               "seconds": time.perf_counter() - t0}
        if rung.objective.aggressive:  # the phase this epoch ran in, and the MI that decides the next
            mi = valid_mi(model, valid, precision, max(config.batch_size, 256),
                          generator(derive_seed(seed, VALID_STREAM, 2)))
            phase.end_of_epoch(mi)
            row.update(aggressive=int(aggressive), inner_steps_per_step=inner_steps / steps_per_epoch,
                       valid_mi_nats=mi, seconds=time.perf_counter() - t0)
        history.append(row)
        if log is not None:
            log(row)
        print(f"{rung.name} s{seed} epoch {epoch}: train ELBO {train_elbo:.2f}, valid ELBO "
              f"{v['elbo']:.2f}, valid KL {v['kl']:.2f} nats ({row['seconds']:.1f}s)", flush=True)
        if best is None or v["elbo"] > best["valid_elbo_nats"] + config.min_delta_nats:
            best = {"epoch": epoch, "valid_elbo_nats": v["elbo"], "valid_kl_nats": v["kl"],
                    "model_state": model_state(model),
                    "optimizer_state": copy.deepcopy(optimizer.state_dict())}
        stop = config.converged(epoch, best["epoch"])
        if stop:
            print(f"{rung.name} s{seed}: stopped after epoch {epoch}, {config.patience} epochs "
                  f"without a valid ELBO gain over {config.min_delta_nats} nats (best: epoch "
                  f"{best['epoch']})", flush=True)
        if resume_path is not None and epoch < config.epochs and not stop:
            save_checkpoint(resume_path, {
                "run_id": run_id, "epoch": epoch, "best": best, "history": history,
                "model_state": model_state(model), "optimizer_state": optimizer.state_dict(),
                "aggressive": phase.plain()})
        if stop:
            break

    final = {**identity, "epoch": best["epoch"], "valid_elbo_nats": best["valid_elbo_nats"],
             "valid_kl_nats": best["valid_kl_nats"], "epochs_trained": len(history),
             "converged": config.converged(len(history), best["epoch"]),
             "precision": precision.name, "model_state": best["model_state"],
             "optimizer_state": best["optimizer_state"]}
    return final, pd.DataFrame(history)


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def run(params: StudyParams, decoder: str, seed: int, layout: Layout, progress: bool = True) -> Path:
    """The stage: validate, check outputs are writable, train, write outputs atomically."""
    rung = params.rung(decoder)
    model_path, history_dir = layout.model(decoder, seed), layout.history(decoder, seed)
    for folder in (model_path.parent, history_dir.parent, layout.scratch(decoder, seed).parent):
        ensure_writable_dir(folder)
    splits = load_splits(layout.binarized)
    precision = resolve_precision(params.train.precision, resolve_device())
    print(f"train {decoder} seed {seed}: {rung.plain()} on {precision.device} ({precision.name}), "
          f"{len(splits['train'])} train / {len(splits['valid'])} valid images")
    scratch = layout.scratch(decoder, seed)
    epoch_log = EpochLog(history_dir, root=layout.root)
    try:
        job = TrainRun(rung, params.encoder, params.train, seed, data_id=file_digest(layout.binarized))
        state, _ = train_rung(job, splits["train"], splits["valid"], precision, resume_path=scratch,
                              progress=progress, log=epoch_log.log)
    finally:
        epoch_log.close()
    save_checkpoint(model_path, state)
    scratch.unlink(missing_ok=True)
    return model_path


def command(decoder: str = typer.Argument(..., help="a key of `decoders` in params.yaml"),
            seed: int = typer.Option(0, min=0, help="training seed"),
            params: Path = PARAMS, root: Path = ROOT, study: str = STUDY,
            progress: bool = PROGRESS) -> None:
    """Train one rung of the decoder ladder (resumes an interrupted run)."""
    from stages.memory import check_training_fits
    from stages.runtime import keep_freed_memory

    keep_freed_memory()
    config = load_run_params(params, seed)
    precision = resolve_precision(config.train.precision, resolve_device())
    if precision.device.type == "cpu":  # a GPU's memory is its own: torch's error names it
        check_training_fits(config.rung(decoder), config.encoder, config.train.batch_size,
                            bf16=precision.name == "bf16")
    run(config, decoder, seed, Layout(root, study), progress=progress)
