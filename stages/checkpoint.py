"""Checkpoints: weights plus the configs that rebuild the model, loaded without running code.

A checkpoint is a dict of tensors and plain data saved with torch.save and read back with
`torch.load(weights_only=True)`, which refuses pickled objects of any other kind: remote
caches are shared between people, and a checkpoint must never execute code. The configs
inside are validated with the same schema as params.yaml when the model is rebuilt.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from stages.errors import CheckpointError, TrainingDiverged
from stages.fsutil import write_bytes
from stages.model import VAE, EncoderConfig, build_model
from stages.params import Rung, parse_rung
from stages.schema import Errors, build, to_plain

FORMAT = 1


def model_state(model: VAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def describe(rung: Rung, encoder: EncoderConfig) -> dict[str, Any]:
    """The plain-data identity of a model: what a checkpoint stores and params must match."""
    return {"rung_name": rung.name, "rung": rung.plain(), "encoder": to_plain(encoder)}


def canonical(obj: Any) -> Any:
    """The same data with no shared objects and interned strings, so that equal states
    pickle to equal bytes (pickle writes a back-reference for an object it saw before;
    a resumed run holds other objects than an uninterrupted one, with equal values)."""
    if isinstance(obj, dict):
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(canonical(v) for v in obj)
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    return obj


def weights_problem(weights: Any, what: str) -> str | None:
    """What is wrong with `weights` (named `what`) as a model's weights: not a mapping of tensors,
    or a floating-point weight that is not finite; None when nothing is."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return f"{what} is not a mapping of tensors"
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    return f"weight {bad} of {what} is not finite" if bad is not None else None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically and byte-for-byte reproducibly; refuse weights that are not finite."""
    problem = weights_problem(state.get("model_state", {}), "model_state")
    if problem is not None:
        raise TrainingDiverged(f"refusing to write {path}: {problem}")
    buffer = io.BytesIO()  # in memory: torch reports failed file writes as RuntimeError, and
    torch.save(canonical({"format": FORMAT, **state}), buffer)  # names the archive after the file
    write_bytes(path, buffer.getvalue())


def _remedy(path: Path) -> str:
    """What to do with an unreadable file: a resume file is only a head start."""
    if ".scratch" in path.parts:
        return "it is only an interrupted run's resume state: delete it, and the run starts over"
    return ("delete it, then `dvc checkout` its train stage to restore it from the DVC cache, "
            "or rerun that stage")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{path}: refused: not a complete checkpoint archive, so truncated, "
                              f"corrupt or not written by this study ({path.stat().st_size} bytes); "
                              f"{_remedy(path)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint missing (run its train stage first)") from None
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused: not a plain tensors-and-data checkpoint, and checkpoints are "
            f"never unpickled with code execution ({first_line})"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: truncated or corrupt ({first_line}); {_remedy(path)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this study (format {FORMAT})")
    return state


def stored_identity(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says it is, with the defaults of options it predates filled in (an
    option added later, at its default, describes the same model), as `describe` gives it."""
    errors = Errors()
    rung = parse_rung(state.get("rung_name"), state.get("rung"), "rung", errors)
    encoder = build(EncoderConfig, state.get("encoder"), "encoder", errors)
    if rung is None or encoder is None:
        return {key: state.get(key) for key in ("rung_name", "rung", "encoder")}
    return describe(rung, encoder)


def check_matches(state: dict[str, Any], rung: Rung, encoder: EncoderConfig, path: str | Path) -> None:
    """Refuse a checkpoint trained with other settings than the params say."""
    expected, stored = describe(rung, encoder), stored_identity(state)
    problems = []
    for key in expected:
        have, want = stored.get(key), expected[key]
        if have != want:
            problems.append(f"{key}: checkpoint has {have!r}, params.yaml says {want!r}")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise CheckpointError(f"{path} does not match params.yaml (retrain it):\n{lines}")


def rebuild(state: dict[str, Any], path: str | Path = "checkpoint") -> tuple[VAE, Rung]:
    """The model a checkpoint describes, with its weights, on the CPU."""
    errors = Errors()
    encoder_cfg = build(EncoderConfig, state.get("encoder"), "encoder", errors)
    rung = parse_rung(state.get("rung_name"), state.get("rung"), "rung", errors)
    errors.raise_if_any(f"{path} (its stored config)")
    weights = state.get("model_state")
    problem = weights_problem(weights, "model_state")
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}; {_remedy(Path(path))}")
    model = build_model(rung, encoder_cfg)
    try:
        model.load_state_dict(weights)
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the stored config: {e}") from None
    return model, rung


def _check_training_record(state: dict[str, Any], path: str | Path) -> None:
    """The fields evaluation reports beside its metrics: refused before any work, not after."""
    epoch = state.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise CheckpointError(f"{path}: no valid `epoch` (got {epoch!r}); {_remedy(Path(path))}")
    for key in ("valid_elbo_nats", "valid_kl_nats"):
        value = state.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise CheckpointError(f"{path}: no valid `{key}` (got {value!r}); {_remedy(Path(path))}")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_resume_state(state: dict[str, Any], path: str | Path, epochs: int, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer) -> None:
    """Load an interrupted run's state into `model` and `optimizer`, once every field has been
    checked: a damaged or crafted resume file is refused with what is wrong in it and what to
    do (delete it: it is only a head start), never a traceback and never half applied."""
    problems = []
    epoch = state.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch < epochs:
        problems.append(f"`epoch` {epoch!r} is not a finished epoch before the cap of {epochs}")
    history = state.get("history")
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history) \
            or (isinstance(epoch, int) and len(history) != epoch):
        problems.append("`history` is not one row per finished epoch")
    best = state.get("best")
    if not isinstance(best, dict) or not isinstance(best.get("epoch"), int) \
            or not all(_finite_number(best.get(k)) for k in ("valid_elbo_nats", "valid_kl_nats")):
        problems.append("`best` lacks a valid epoch, valid_elbo_nats or valid_kl_nats")
    else:
        problems.append(weights_problem(best.get("model_state"), "best.model_state"))
    problems.append(weights_problem(state.get("model_state"), "model_state"))
    phase = state.get("aggressive", {"on": False, "best_mi": 0.0})
    if not isinstance(phase, dict) or set(phase) != {"on", "best_mi"} or not isinstance(phase["on"], bool) \
            or not isinstance(phase["best_mi"], (int, float)):
        problems.append("`aggressive` is not the aggressive phase's {on, best_mi}")
    problems = [p for p in problems if p]
    if not problems:
        backup = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
        try:
            model.load_state_dict(state["model_state"])
            optimizer.load_state_dict(state["optimizer_state"])
            if best is not None:
                model.load_state_dict(best["model_state"])  # the best weights must fit as well
                model.load_state_dict(state["model_state"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            model.load_state_dict(backup[0])
            optimizer.load_state_dict(backup[1])
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problems.append(f"its weights or optimizer state do not fit this run ({first_line})")
    if problems:
        raise CheckpointError(f"{path}: unusable resume state: {'; '.join(problems)}; {_remedy(Path(path))}")


def load_model(path: str | Path, rung: Rung | None = None,
               encoder: EncoderConfig | None = None) -> tuple[VAE, Rung, dict[str, Any]]:
    """Load, optionally check against params, and rebuild; returns (model, rung, state)."""
    state = load_checkpoint(path)
    if rung is not None and encoder is not None:
        check_matches(state, rung, encoder, path)
    model, stored_rung = rebuild(state, path)
    _check_training_record(state, path)
    return model, stored_rung, state
