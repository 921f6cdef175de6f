"""The one schema of params.yaml: typed, range-checked config objects for every stage.

Params flow one way: a stage command calls `load_params`, which validates the whole file
(every problem reported at once, with its key path and what is allowed) before any data is
read or model built, and passes the resulting frozen config objects down.

Every key of the shared sections (binarize, encoder, train, evaluate, report) is required:
params.yaml is the one place its value is defined, so no default in code can disagree with
it. The per-rung options (a decoder family's architecture, the objective's mitigations)
have their defaults here and in `stages.model`, which the stages list as DVC dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from stages.binarize import N_MNIST_TRAIN, BinarizeConfig, parse_binarize
from stages.errors import ParamsError
from stages.model import DECODERS, EncoderConfig
from stages.paramsfile import (OBJECTIVE_NAME_RULE, RUNG_NAME_RULE, SEEDS_RULE, objective_name_ok, read_yaml,
                               rung_name_ok, seeds_ok)
from stages.schema import Errors, build, config, did_you_mean, field_names, to_plain

N_MNIST_TEST = 10000
# A rung's role on the ladder (`Rung.role`): only trend rungs are points of the power trend.
TREND, COMPARISON, MITIGATED, NO_Z = "trend", "comparison", "mitigated", "no z"


@config
class TrainConfig:
    epochs: int = Field(ge=1, le=100000)
    batch_size: int = Field(ge=1, le=65536)
    lr: float = Field(gt=0, le=1)
    precision: Literal["auto", "bf16", "fp32"] = Field()
    valid_subset: int | None = Field(ge=1, le=N_MNIST_TRAIN - 1, description="valid images per epoch")
    patience: int | None = Field(ge=1, le=100000, description="early stopping: stop after this many "
                                 "epochs without a valid ELBO improvement (null: run every epoch)")
    min_delta_nats: float = Field(ge=0.0, le=1000.0, description="an improvement must beat the best "
                                  "valid ELBO by more than this")

    def converged(self, epoch: int, best_epoch: int) -> bool:
        """Early stopping: `patience` epochs after the best one have passed without a gain."""
        return self.patience is not None and epoch - best_epoch >= self.patience


@config
class EvaluateConfig:
    k: int = Field(ge=1, le=10_000_000, description="importance samples per test image")
    n_test: int | None = Field(ge=1, le=N_MNIST_TEST, description="test images (null: all)")
    batch_size: int = Field(ge=1, le=100000, description="test images per encoder pass")
    chunk_size: int = Field(ge=1, le=10_000_000, description="(image, sample) pairs per decoder call")
    precision: Literal["auto", "bf16", "fp32"] = Field()
    probe_train_size: int | None = Field(ge=10, le=N_MNIST_TRAIN,
                                         description="training images for the probe and q(z) in the MI")
    mi_samples: int = Field(ge=1, le=10000, description="z draws per image for KL[q(z)||p(z)]")
    active_unit_threshold: float = Field(gt=0)
    n_show: int = Field(ge=1, le=100, description="test digits reconstructed and prior samples drawn")
    seed: int = Field(ge=0, le=2**31 - 1)


@config
class ReportConfig:
    collapse_threshold_nats: float = Field(gt=0, description="KL below this: collapsed")


@config
class ObjectiveConfig:
    """The training objective: the ELBO when every option is off (the default); each option is a
    remedy of posterior collapse (stages.train implements them). The ELBO reported is always
    the true one."""

    kl_warmup_steps: int = Field(0, ge=0, le=10**9, description="beta from 0 to 1 over this many steps")
    free_bits: float = Field(0.0, ge=0.0, le=1000.0, description="lambda, nats per latent dimension")
    beta: float = Field(1.0, gt=0, le=1, description="weight of the KL term (beta-VAE)")
    aggressive: bool = Field(False, description="aggressive inference-network training (He et al. 2019)")
    aggressive_max_inner_steps: int = Field(100, ge=1, le=100000,
                                            description="encoder updates per decoder update, at most")
    aggressive_check_every: int = Field(10, ge=1, le=100000,
                                        description="inner steps per check that the encoder still improves")

    @property
    def is_elbo(self) -> bool:
        return self == ObjectiveConfig()


@dataclass(frozen=True)
class Rung:
    """One rung of the decoder ladder: a decoder family with its options and objective."""

    name: str
    family: str
    decoder: Any  # the family's Config instance
    objective: ObjectiveConfig

    def plain(self) -> dict[str, Any]:
        """The complete entry, defaults filled in: what checkpoints store and compare."""
        return {"family": self.family, **to_plain(self.decoder), **to_plain(self.objective)}

    @property
    def uses_z(self) -> bool:
        """False for a decoder alone (`conditional: false`): its likelihood ignores z."""
        return getattr(self.decoder, "conditional", True)

    @property
    def role(self) -> str:
        """What the rung is on the ladder: a point of the power trend, or a marked side rung."""
        if not self.uses_z:
            return NO_Z
        if not self.objective.is_elbo:
            return MITIGATED
        if getattr(self.decoder, "z_pathway", "spatial") == "bias":
            return COMPARISON
        return TREND


@dataclass(frozen=True)
class Cell:
    """Where a run of a grid study sits: its rung (`decoders` key) and objective
    (`objectives` key)."""

    rung: str
    objective: str


@dataclass(frozen=True)
class StudyParams:
    binarize: BinarizeConfig
    encoder: EncoderConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    report: ReportConfig
    seeds: tuple[int, ...]
    decoders: dict[str, Rung]  # in params order: the ladder, weakest first (a grid: its cells)
    objectives: dict[str, ObjectiveConfig] = field(default_factory=dict)  # a grid's second axis
    cells: dict[str, Cell] = field(default_factory=dict)  # a grid: run name -> (rung, objective)

    def rung(self, name: str) -> Rung:
        if name not in self.decoders:
            have = ", ".join(self.decoders)
            raise ParamsError(f"decoder {name!r} is not in params.yaml `decoders` (have: {have})")
        return self.decoders[name]


SECTIONS = {
    "encoder": EncoderConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
}
TOP_LEVEL = ("binarize", *SECTIONS, "seeds", "decoders", "objectives")
CELL_JOIN = "__"  # a grid run's name (an objective name never holds it): <rung>__<objective>; a rung without z keeps its own name


def parse_rung(name: Any, raw: Any, path: str, errors: Errors) -> Rung | None:
    """Validate one `decoders.<name>` entry: `{family: ..., <family options>, <objective>}`."""
    if not rung_name_ok(name):
        errors.add(path, RUNG_NAME_RULE)
        return None
    if not isinstance(raw, dict):
        errors.add(path, f"must be a mapping like {{family: mlp}}, got {raw!r}")
        return None
    family = raw.get("family")
    if not isinstance(family, str) or family not in DECODERS:
        errors.add(f"{path}.family", f"got {family!r}; allowed families: {', '.join(DECODERS)}")
        return None
    config_cls = DECODERS[family].Config
    objective_keys = set(field_names(ObjectiveConfig))
    options = {k: v for k, v in raw.items() if k != "family" and k not in objective_keys}
    objective_raw = {k: v for k, v in raw.items() if k in objective_keys}
    n_before = len(errors.lines)
    allowed = field_names(config_cls) + sorted(objective_keys)
    for key in options:
        if key not in field_names(config_cls):
            errors.add(f"{path}.{key}", f"unknown option for family {family!r}"
                                        f"{did_you_mean(key, ['family', *allowed])}; allowed: "
                                        f"family, {', '.join(allowed)}")
    decoder = build(config_cls, {k: v for k, v in options.items() if k in field_names(config_cls)},
                    path, errors)
    objective = build(ObjectiveConfig, objective_raw, path, errors)
    if len(errors.lines) > n_before or decoder is None or objective is None:
        return None
    return Rung(name, family, decoder, objective)


def _parse_seeds(raw: Any, errors: Errors) -> tuple[int, ...]:
    if not seeds_ok(raw):
        errors.add("seeds", f"got {raw!r}; {SEEDS_RULE}")
        return ()
    return tuple(raw)


def parse_objectives(raw: Any, errors: Errors) -> dict[str, ObjectiveConfig]:
    """The optional `objectives` section: name -> objective options; the first must be the plain
    ELBO, the reference every other objective is compared with."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        errors.add("objectives", "must be a non-empty mapping of objective name -> options, the "
                                 "first the plain ELBO ({}); allowed options: "
                                 + ", ".join(field_names(ObjectiveConfig)))
        return {}
    objectives = {}
    for name, entry in raw.items():
        path = f"objectives.{name}"
        if not objective_name_ok(name):
            errors.add(path, OBJECTIVE_NAME_RULE)
            continue
        objective = build(ObjectiveConfig, {} if entry is None else entry, path, errors)
        if objective is not None:
            objectives[name] = objective
    first = next(iter(raw))
    if first in objectives and not objectives[first].is_elbo:
        errors.add(f"objectives.{first}", "the first objective is the reference and must be the "
                                          "plain ELBO: give it no options ({})")
    return objectives


def expand_grid(decoders: dict[str, Rung], objectives: dict[str, ObjectiveConfig],
                errors: Errors) -> tuple[dict[str, Rung], dict[str, Cell]]:
    """Every rung with z under every objective, `<rung>__<objective>`; a rung without z once,
    under the reference objective (without z in the decoder, no objective changes what it learns)."""
    reference = next(iter(objectives))
    runs: dict[str, Rung] = {}
    cells: dict[str, Cell] = {}
    for name, rung in decoders.items():
        if not rung.objective.is_elbo:
            errors.add(f"decoders.{name}", "with an `objectives` section the objective options "
                       "belong there, not in a rung: remove " + ", ".join(
                           k for k, v in to_plain(rung.objective).items()
                           if v != to_plain(ObjectiveConfig())[k]))
            continue
        for objective in objectives if rung.uses_z else [reference]:
            run = f"{name}{CELL_JOIN}{objective}" if rung.uses_z else name
            if len(run) > 64 or run in runs:
                errors.add(f"decoders.{name}", f"the run name {run!r} is " + (
                    "longer than 64 characters" if len(run) > 64 else "taken by another rung"))
                continue
            runs[run] = replace(rung, name=run, objective=objectives[objective])
            cells[run] = Cell(name, objective)
    return runs, cells


def parse_params(raw: Any, source: str = "params.yaml") -> StudyParams:
    """Validate the parsed YAML document; raise one ParamsError naming every problem."""
    errors = Errors()
    if not isinstance(raw, dict):
        errors.add("(top level)", f"must be a mapping of sections, got {type(raw).__name__}")
        errors.raise_if_any(source)
    for key in raw:
        if key not in TOP_LEVEL:
            errors.add(str(key), f"unknown section{did_you_mean(key, TOP_LEVEL)}; "
                                 f"allowed: {', '.join(TOP_LEVEL)}")
    sections = {"binarize": parse_binarize(raw.get("binarize"), errors),
                **{name: build(cls, raw.get(name), name, errors) for name, cls in SECTIONS.items()}}
    seeds = _parse_seeds(raw.get("seeds"), errors)
    decoders: dict[str, Rung] = {}
    raw_decoders = raw.get("decoders")
    if not isinstance(raw_decoders, dict) or not raw_decoders:
        errors.add("decoders", "must be a non-empty mapping of rung name -> {family: ..., ...}; "
                               f"allowed families: {', '.join(DECODERS)}")
    else:
        for name, entry in raw_decoders.items():
            rung = parse_rung(name, entry, f"decoders.{name}", errors)
            if rung is not None:
                decoders[name] = rung
    t = sections["train"]
    if t is not None and t.patience is not None and t.patience >= t.epochs:
        errors.add("train.patience", f"got {t.patience}; with epochs {t.epochs} (the cap) it could "
                   "never stop early: use a patience below epochs, or null to run every epoch")
    objectives = parse_objectives(raw.get("objectives"), errors)
    cells: dict[str, Cell] = {}
    if objectives and decoders:
        decoders, cells = expand_grid(decoders, objectives, errors)
    errors.raise_if_any(source)
    return StudyParams(**sections, seeds=seeds, decoders=decoders, objectives=objectives, cells=cells)


def load_params(path: str | Path = "params.yaml") -> StudyParams:
    """Read the file as DVC reads it (stages.paramsfile), then validate it."""
    return parse_params(read_yaml(path), str(path))


def load_run_params(path: str | Path, seed: int) -> StudyParams:
    """The validated params of one training seed's run, refusing a seed outside `seeds`: its
    files would be outputs of no DVC stage (untracked, never in the report)."""
    p = load_params(path)
    if seed not in p.seeds:
        have = ", ".join(map(str, p.seeds))
        raise ParamsError(f"--seed {seed} is not in `seeds` of {path} ({have}): add it there "
                          "first, so that DVC tracks the run and the report reads it")
    return p
