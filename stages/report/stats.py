"""The study's one statistical rule, used by every claim of every report.

The unit of evidence is the training seed. A quantity is summarised by its mean over seeds and
a 95 % confidence interval from Student's t with n - 1 degrees of freedom (`Interval`); where a
VAE and its decoder alone share the seed and the test images, the interval is over the per-seed
differences (paired, `paired`); two independent groups of seeds (two rungs, two studies) are
compared by Welch's interval for the difference of their means (`difference`). A comparison is
decided only when its interval excludes the value it is compared with; otherwise it is
*unresolved*, and `Interval.seeds_to_resolve` says how many seeds would decide it if the measured
spread held (Bouthillier et al. 2021, "Accounting for variance in machine learning benchmarks";
Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice": "mean more than two
seed std from X" is about a 90 % interval with 3 seeds and about 70 % with 2).

Rank trends are Spearman's rho with the number of points and the exact two-sided permutation p
(`spearman`): over 5 rungs, rho = -0.9 has p = 0.083.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.95
# Student t's 0.975 quantile for 1..30 degrees of freedom (beyond: Cornish-Fisher, error < 1e-3).
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.959964
MAX_SEEDS = 100  # "more than this many seeds": the spread leaves it practically unresolvable
EXACT_UP_TO = 8  # Spearman's p by every permutation up to this many points (8! = 40,320)


def t_quantile(df: float) -> float:
    """The 0.975 quantile of Student's t; a fractional df (Welch) is rounded down (wider)."""
    k = max(1, math.floor(df))
    if k <= len(T975):
        return T975[k - 1]
    z = Z975
    return z + (z**3 + z) / (4 * k) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * k**2)


@dataclass(frozen=True)
class Interval:
    """A mean over n seeds with its 95 % t interval [lo, hi] (NaN bounds with one seed)."""

    mean: float
    std: float  # over seeds, ddof 1 (for a Welch difference: its standard error x sqrt(n))
    n: int
    df: float
    lo: float
    hi: float

    @classmethod
    def of(cls, mean: float, std: float, n: int, df: float | None = None) -> Interval:
        """From a summary: mean, seed std (ddof 1) and the number of seeds."""
        df = n - 1 if df is None else df
        if n < 2 or pd.isna(std) or pd.isna(mean):
            return cls(float(mean), math.nan, int(n), math.nan, math.nan, math.nan)
        half = t_quantile(df) * float(std) / math.sqrt(n)
        return cls(float(mean), float(std), int(n), float(df), float(mean) - half, float(mean) + half)

    @classmethod
    def from_plain(cls, d: dict) -> Interval:
        """Back from `plain()` (NaN or None bounds: one seed)."""
        nan = float("nan")
        lo, hi = (nan if d.get(k) is None else float(d[k]) for k in ("lo", "hi"))
        return cls(float(d["mean"]), nan, int(d["n"]), nan, lo, hi)

    @property
    def known(self) -> bool:
        return not pd.isna(self.lo)

    def side(self, value: float = 0.0) -> str:
        """'above' or 'below' `value` when the interval excludes it, else 'unresolved'."""
        if not self.known or self.lo <= value <= self.hi:
            return "unresolved"
        return "above" if self.lo > value else "below"

    def seeds_to_resolve(self, value: float = 0.0) -> int | None:
        """How many seeds would put `value` outside the interval at the measured spread (None
        when the spread is unknown or the mean sits on the value: no number of seeds would)."""
        gap = abs(self.mean - value)
        if not self.known or gap == 0 or pd.isna(gap):
            return None
        for n in range(2, MAX_SEEDS + 1):
            if t_quantile(n - 1) * self.std / math.sqrt(n) < gap:
                return n
        return MAX_SEEDS + 1

    def text(self, digits: int = 2, unit: str = "", sign: str = "") -> str:
        """'mean [lo, hi]unit', the mean alone with one seed; never '-0.00'; sign='+' for changes."""
        def f(v: float) -> str:
            return f"{0.0 if round(v, digits) == 0 else v:{sign}.{digits}f}"

        body = f(self.mean) if not self.known else f"{f(self.mean)} [{f(self.lo)}, {f(self.hi)}]"
        return body + unit

    def plain(self) -> dict[str, float | int]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def interval(values) -> Interval:
    """The 95 % t interval of the mean of per-seed values."""
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    return Interval.of(float(v.mean()) if len(v) else math.nan,
                       float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))


def paired(a, b) -> Interval:
    """The interval of the mean of per-seed differences a - b (the same seeds, in order)."""
    return interval(np.asarray(list(a), dtype=float) - np.asarray(list(b), dtype=float))


def difference(a: Interval, b: Interval) -> Interval:
    """Welch's interval for mean(a) - mean(b) of two independent groups of seeds."""
    mean = a.mean - b.mean
    if not (a.known and b.known):
        return Interval.of(mean, math.nan, min(a.n, b.n))
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(mean, 0.0, a.n + b.n, a.n + b.n - 2, mean, mean)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    n = 2  # carried so that Interval.of's std / sqrt(n) is the standard error
    return Interval.of(mean, se * math.sqrt(n), n, df)


def seed_word(n: int | None) -> str:
    if n is None:
        return "no number of seeds would at this spread"
    if n > MAX_SEEDS:
        return f"more than {MAX_SEEDS} seeds would be needed at this spread"
    return f"about {n} seeds would resolve it at this spread"


def nats_word(value: float) -> str:
    """'1 nat', '0.5 nats': a threshold in words."""
    return f"{value:g} nat" + ("" if value == 1 else "s")


def _ranks(x) -> np.ndarray:
    return pd.Series(list(x), dtype=float).rank().to_numpy()


def spearman(x, y) -> tuple[float, float]:
    """Spearman's rho (ties averaged) and its two-sided permutation p: exact over every
    permutation up to EXACT_UP_TO points, else from 20,000 seeded permutations."""
    rx, ry = _ranks(x), _ranks(y)
    n = len(rx)
    if n < 3 or len(set(rx)) < 2 or len(set(ry)) < 2:
        return math.nan, math.nan

    def rho(r: np.ndarray) -> float:
        return float(np.corrcoef(rx, r)[0, 1])

    observed = rho(ry)
    if n <= EXACT_UP_TO:
        perms = (np.array(p) for p in itertools.permutations(ry))
        total = math.factorial(n)
    else:
        rng = np.random.default_rng(0)
        total = 20000
        perms = (rng.permutation(ry) for _ in range(total))
    extreme = sum(abs(rho(p)) >= abs(observed) - 1e-12 for p in perms)
    return observed, extreme / total


def step_word(change: Interval) -> str:
    """A step along an axis: 'falls' / 'rises' only where its interval excludes 0, 'flat' where it
    contains 0, 'undecided' without an interval (one seed)."""
    if not change.known:
        return "undecided"
    return {"below": "falls", "above": "rises"}.get(change.side(0.0), "flat")
