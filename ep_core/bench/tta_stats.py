"""The statistics of `ep-core bench-tta`: paired differences by seed with their 95 % t-interval, the
training-time speed-up, the stated targets, and the selection rules of the `--select` and `--select-lr` steps.

Every comparison is paired by seed: seed s of a recipe and seed s of the reference share the data order,
the augmentation and the initial weights, so the difference of their accuracies removes what the seed
alone would do to either. The interval is Student's: mean ± t(0.975, n − 1) · sd / √n over the n seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The targets the README's claim is held to: training-time speed-up and the paired 95 % interval.
TARGET_SPEEDUP = 3.0
TARGET_MARGIN = 1.0  # accuracy points: the interval of recipe − reference must lie inside ±this


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (scipy's, which scikit-learn brings)."""
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Paired:
    """The paired difference a − b over seeds: its mean, sd, n and 95 % t-interval (None for n < 2)."""

    mean: float
    sd: float | None
    n: int
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "sd": self.sd, "n": self.n, "ci95_low": self.low, "ci95_high": self.high}


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> Paired:
    """a[s] − b[s] over the seeds both have (a ValueError when they share none)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("a paired difference needs at least one seed that both sides have")
    d = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return Paired(mean, None, 1, None, None)
    sd = statistics.stdev(d)
    half = t_quantile(0.5 + level / 2, len(d) - 1) * sd / math.sqrt(len(d))
    return Paired(mean, sd, len(d), mean - half, mean + half)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def times(speedup: float) -> str:
    """A speed-up as shown: 2 decimals, or 3 where 2 would round a miss up to the target (2.998x, not
    3.00x)."""
    return f"{speedup:.3f}x" if speedup < TARGET_SPEEDUP <= round(speedup, 2) else f"{speedup:.2f}x"


def verdict(speedup: float | None, diff: Paired) -> tuple[bool, str]:
    """Whether `speed-up ≥ TARGET_SPEEDUP and the interval inside ±TARGET_MARGIN` holds, and why."""
    reasons = []
    if speedup is None or not speedup >= TARGET_SPEEDUP:
        shown = "unknown" if speedup is None else times(speedup)
        reasons.append(f"training-time speed-up {shown} < {TARGET_SPEEDUP:g}x")
    if diff.low is None or diff.high is None:
        reasons.append(f"no interval from {diff.n} seed(s)")
    else:
        if diff.low < -TARGET_MARGIN:
            reasons.append(f"the 95 % interval reaches {diff.low:+.2f} points < -{TARGET_MARGIN:g}")
        if diff.high > TARGET_MARGIN:
            reasons.append(f"the 95 % interval reaches {diff.high:+.2f} points > +{TARGET_MARGIN:g}")
    if reasons:
        return False, "; ".join(reasons)
    return True, (
        f"speed-up {times(speedup)} >= {TARGET_SPEEDUP:g}x and the 95 % interval "
        f"[{diff.low:+.2f}, {diff.high:+.2f}] lies inside ±{TARGET_MARGIN:g} points"
    )


def select_candidate(
    candidates: dict[str, dict[str, float]], reference: dict[str, float], tolerance: float
) -> str | None:
    """The selection rule: among the candidates whose mean validation accuracy is at least the reference's
    minus `tolerance` points, the one with the least mean training seconds (ties: the first given); None
    when none qualifies. Each entry: {"val_acc": mean, "train_seconds": mean}."""
    if tolerance < 0:
        raise ValueError(f"the selection tolerance must be >= 0 points, got {tolerance}")
    floor = reference["val_acc"] - tolerance
    eligible = [name for name, c in candidates.items() if c["val_acc"] >= floor]
    if not eligible:
        return None
    return min(eligible, key=lambda name: candidates[name]["train_seconds"])


def choose_lr(candidates: list[dict[str, Any]]) -> float | None:
    """The learning-rate rule of `--select-lr`: among the rates at which every selection network lived (it
    completed and no hidden layer died), the one with the highest mean validation accuracy over all of
    them, every recipe's networks alike (ties: the first given); None when a network died at every rate.
    Each entry: {"lr": rate, "lived": bool, "val_acc": mean or None}. Living comes first because one dead
    network (at chance) moves a paired difference by tens of points: more than any recipe has."""
    lived = [c for c in candidates if c["lived"] and c["val_acc"] is not None]
    if not lived:
        return None
    return max(lived, key=lambda c: c["val_acc"])["lr"]


def rotated_order(names: Sequence[str], index: int) -> list[str]:
    """The run order of the index-th seed: `names` rotated left by `index`, so that over len(names)
    consecutive seeds every recipe goes first once (with two recipes, they alternate)."""
    if not names:
        return []
    k = index % len(names)
    return [*names[k:], *names[:k]]


def fitting_epochs(budget_seconds: float, seconds_per_epoch: float) -> int:
    """The whole epochs of `seconds_per_epoch` that fit in `budget_seconds` (at least 1)."""
    if not seconds_per_epoch > 0:
        raise ValueError(f"seconds per epoch must be > 0, got {seconds_per_epoch}")
    return max(1, math.floor(budget_seconds / seconds_per_epoch + 1e-9))
