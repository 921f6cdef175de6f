"""A rung too large for the machine is refused before training, with what to lower.

Under memory overcommit the kernel kills such a run with SIGKILL and no message, so the train
command estimates the step's peak first (`stages.memory`)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, TINY_PARAMS, env_with_venv, tiny_params

from stages.errors import StudyError
from stages.memory import GIB, available_bytes, check_training_fits, training_step_bytes

HUGE = {"family": "pixelcnn", "channels": 1024, "n_layers": 64}


def test_the_estimate_grows_with_the_rung_and_the_batch_and_costs_no_memory():
    params = tiny_params(decoders={"small": {"family": "pixelcnn", "n_layers": 2, "channels": 8},
                                   "wide": {"family": "pixelcnn", "n_layers": 2, "channels": 32},
                                   "huge": HUGE})
    small, wide = (training_step_bytes(params.rung(n), params.encoder, 64) for n in ("small", "wide"))
    assert 0 < small < wide < training_step_bytes(params.rung("wide"), params.encoder, 256)
    assert wide < training_step_bytes(params.rung("wide"), params.encoder, 64, bf16=False)  # fp32 keeps more
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = training_step_bytes(params.rung("huge"), params.encoder, 64)  # fake tensors: no storage
    assert huge > 50 * GIB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB


def test_the_estimate_covers_the_measured_peak_of_a_real_training_step():
    """The estimate errs high: a real bf16 step of a rung grows the resident size by less."""
    probe = """
import resource, torch
from helpers import tiny_params
from stages.memory import training_step_bytes
from stages.runtime import resolve_device, resolve_precision
from stages.model import build_model
params = tiny_params(decoders={"p": {"family": "pixelcnn", "n_layers": 4, "channels": 32}})
prec = resolve_precision("bf16", resolve_device())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = prec.model(build_model(params.rung("p"), params.encoder)).train()
optimizer = torch.optim.Adam(model.parameters())
x = prec.batch(torch.bernoulli(torch.full((128, 1, 28, 28), 0.13)))
for _ in range(2):
    with prec.autocast():
        t = model.elbo_terms(x)
        loss = -(t.log_px_z - t.kl).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base,
      training_step_bytes(params.rung("p"), params.encoder, 128))
"""

    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO / "tests", capture_output=True, text=True,
                         env={**env_with_venv(), "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}, check=True).stdout
    grown, estimate = map(int, out.split())
    assert grown < estimate, (grown, estimate)


def test_a_rung_that_cannot_fit_is_refused_naming_it_and_what_to_lower():
    params = tiny_params(decoders={"huge": HUGE, "small": {"family": "linear"}})
    check_training_fits(params.rung("small"), params.encoder, 64, bf16=True, available=1 * GIB)  # fits
    with pytest.raises(StudyError) as refused:
        check_training_fits(params.rung("huge"), params.encoder, 64, bf16=True, available=1 * GIB)
    message = str(refused.value)
    assert "decoders.huge" in message and "batch_size 64" in message
    assert "1.0 GiB of memory is available" in message
    assert "lower the rung's channels or n_layers, or train.batch_size" in message


def test_the_train_command_refuses_a_rung_too_large_for_this_machine_before_reading_any_data(tmp_path):
    """No data is there: the refusal must come first, as one message, without a traceback."""
    available = available_bytes()
    assert available is not None  # Linux: /proc/meminfo
    batch = 64
    params = tiny_params(decoders={"huge": HUGE})
    while training_step_bytes(params.rung("huge"), params.encoder, batch) <= available:
        batch *= 4  # a machine with more memory than the rung needs at 64: a larger batch
    raw = {**TINY_PARAMS, "decoders": {"huge": HUGE},
           "train": {**TINY_PARAMS["train"], "batch_size": batch}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "stages", "train", "huge", "--root", str(tmp_path),
                           "--params", str(tmp_path / "params.yaml"), "--no-progress"],
                          check=False, capture_output=True, text=True, env=env_with_venv(), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: decoders.huge: one training step"), proc.stderr
    assert "lower the rung's channels or n_layers" in proc.stderr
    assert not (tmp_path / "data").exists()
