"""The gradient-fidelity monitor of a training run, and `ep.recipe: auto`'s choice of sweep counts.

Every `train.fidelity_every` steps (with `auto`, also before the first) the monitor probes the run's
weights on a fixed batch of `train.fidelity_batch` training examples (ep_core.numerics.fidelity): the
cosine of the run's gradient with the converged centered-EP gradient, their relative norm error and the
free state's distance from its fixed point. The epoch's row of history.csv gets the mean of its probes
(`fidelity/…`; MLflow's chart group of that name); metrics.json a summary. One warning line is printed
when the cosine falls below `train.fidelity_min` (again only after it has recovered). Probes are at fixed
steps and read no random numbers, so a resumed run probes where an uninterrupted one does and trains the
same.

With `ep.recipe: auto` the probe also steers the phase lengths. The counts live on a ladder from the cap
(`ep.free_iterations` / `ep.nudge_iterations`: the authors' 120 / 50 unless raised) down to the floor
(`ep.auto_floor` free sweeps), each rung about 1/√2 of the one above with the nudged phase in the cap's
proportion. At the first probe a bisection finds the lowest rung whose cosine reaches `ep.auto_target`;
at each later one the run moves down a rung if the rung below reaches the target, up until the target is
reached if its own does not. Every rung tried costs one estimate on the probe batch, against the probe's
one converged reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ..numerics.estimators import EquilibriumProp, GradientEstimate
from ..numerics.fidelity import Fidelity, probe
from .config import RunConfig
from .datasets import Data
from .distributed import Collective


def ladder(cap: tuple[int, int], floor: int) -> list[tuple[int, int]]:
    """(free, nudged) sweep counts, fewest first: the cap, then ≈ 1/√2 of the rung above while at least
    `floor`, and `floor` itself when the last rung is more than half a rung above it."""
    free_cap, nudge_cap = cap
    floor = min(floor, free_cap)  # a cap below the floor is the only rung
    rungs, free = [], float(free_cap)
    while round(free) >= floor:
        rungs.append(round(free))
        free /= math.sqrt(2)
    if rungs[-1] > floor * 2**0.25:
        rungs.append(floor)
    return [(f, max(1, round(f * nudge_cap / free_cap))) for f in sorted(set(rungs))]


class AutoSweeps:
    """`ep.recipe: auto`'s rung on the ladder, chosen from the probes (see the module docstring)."""

    def __init__(self, ep: EquilibriumProp, target: float, floor: int, rung: int | None = None):
        self.rungs = ladder((ep.free_iterations, ep.nudge_iterations), floor)
        self.target = target
        self.rung = rung  # None until the first probe has chosen one

    def counts(self) -> tuple[int, int]:
        return self.rungs[self.rung if self.rung is not None else -1]

    def choose(self, cosine_at: Callable[[int], float], current: float) -> int:
        """The next rung, given the current rung's cosine and `cosine_at(rung)` for any other."""
        if self.rung is None:  # bisection for the lowest rung that reaches the target
            low, high = 0, len(self.rungs) - 1
            while low < high:
                middle = (low + high) // 2
                if cosine_at(middle) >= self.target:
                    high = middle
                else:
                    low = middle + 1
            self.rung = low
        elif current < self.target:
            while self.rung < len(self.rungs) - 1:
                self.rung += 1
                if cosine_at(self.rung) >= self.target:
                    break
        elif self.rung > 0 and cosine_at(self.rung - 1) >= self.target:
            self.rung -= 1
        return self.rung


class FidelityMonitor:
    """Probes one run's learner every `every` steps; steers it too when given an `AutoSweeps`."""

    def __init__(
        self, learner: Any, batch: tuple[torch.Tensor, torch.Tensor], *, every: int, minimum: float,
        say: Callable[[str], None], auto: AutoSweeps | None = None,
        agree: Callable[[int], int] = lambda rung: rung,
    ):  # fmt: skip
        self.learner, self.batch, self.every, self.minimum, self.say, self.auto = (
            learner, batch, every, minimum, say, auto,
        )  # fmt: skip
        self.agree = agree  # data-parallel: every rank takes rank 0's rung
        self.last_cosine: float | None = None
        if auto is not None and auto.rung is not None:
            self._set_counts(auto.counts())

    def epoch_values(self) -> dict[str, float]:
        """What an epoch's row states besides its probes: auto's sweep counts at the epoch's end."""
        if self.auto is None:
            return {}
        free, nudge = self.auto.counts()
        return {"auto/free_iterations": float(free), "auto/nudge_iterations": float(nudge)}

    def due(self, step: int) -> bool:
        """Whether global step `step` (0-based, before its update) is probed: every `every` steps, and
        with `auto` before the first too (its first choice of counts)."""
        return step % self.every == 0 and (step > 0 or self.auto is not None)

    def state(self) -> dict[str, Any]:
        return {"last_cosine": self.last_cosine, "rung": None if self.auto is None else self.auto.rung}

    def restore(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        self.last_cosine = state["last_cosine"]
        if self.auto is not None and state["rung"] is not None:
            self.auto.rung = state["rung"]
            self._set_counts(self.auto.counts())

    def probe(self, where: str) -> dict[str, float]:
        """Probe now; the history values of this probe (`fidelity/…`, its seconds), after any warning."""
        t0 = time.perf_counter()
        learner = self.learner
        x, y = learner.format_input(self.batch[0]), self.batch[1]
        result, reference = probe(learner.net, x, y, learner.estimator)
        if self.auto is not None:  # what the run trains with from here: the chosen counts' figures
            result = self._steer(result, reference, x, y)
        self._warn(result.cosine, where)
        return result.row() | {"fidelity/probe_seconds": time.perf_counter() - t0}

    def _steer(
        self, result: Fidelity, reference: GradientEstimate, x: torch.Tensor, y: torch.Tensor
    ) -> Fidelity:
        """Move to the rung `AutoSweeps.choose` picks; the probe's figures at that rung (each rung tried is
        estimated once, against the one reference)."""
        assert self.auto is not None
        net, ep = self.learner.net, self.learner.estimator
        current = (ep.free_iterations, ep.nudge_iterations)
        tried = {current: result}

        def at(counts: tuple[int, int]) -> Fidelity:
            if counts not in tried:
                trial = replace(ep, free_iterations=counts[0], nudge_iterations=counts[1])
                tried[counts] = probe(net, x, y, trial, reference=reference)[0]
            return tried[counts]

        rung = self.auto.choose(lambda r: at(self.auto.rungs[r]).cosine, result.cosine)
        self.auto.rung = rung = self.agree(rung)
        self._set_counts(self.auto.rungs[rung])
        return at(self.auto.rungs[rung])

    def _set_counts(self, counts: tuple[int, int]) -> None:
        free, nudge = counts
        self.learner.estimator = replace(self.learner.estimator, free_iterations=free, nudge_iterations=nudge)

    def _warn(self, cosine: float, where: str) -> None:
        below = cosine < self.minimum
        if below and (self.last_cosine is None or self.last_cosine >= self.minimum):
            self.say(
                f"warning: gradient fidelity {cosine:.3f} {where} is below train.fidelity_min "
                f"{self.minimum:g}: this run's phases stop far from the fixed points, so its update is not "
                "the centered-EP gradient; lengthen them (ep.free_iterations, ep.nudge_iterations) or use "
                "ep.recipe: auto"
            )
        self.last_cosine = cosine


def build_monitor(
    config: RunConfig, data: Data, learner: Any, collective: Collective, say: Callable[[str], None]
) -> FidelityMonitor | None:
    """The run's monitor (None when `train.fidelity_every` is 0 or the model is a backprop one)."""
    t, e = config.train, config.ep
    if not config.is_ep or not t.fidelity_every:
        return None
    auto = AutoSweeps(learner.estimator, e.auto_target, e.auto_floor) if e.recipe == "auto" else None
    return FidelityMonitor(
        learner, data.probe_batch(t.fidelity_batch), every=t.fidelity_every, minimum=t.fidelity_min,
        say=say, auto=auto, agree=lambda rung: collective.all_gather_object(rung)[0],
    )  # fmt: skip


def summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """metrics.json's `fidelity`: the probes over the run (None when none ran), their seconds also as a
    share of the training time (`train_seconds`, which includes them)."""
    training_seconds = sum(float(r.get("train_seconds") or 0.0) for r in rows)
    probed = [r for r in rows if r.get("fidelity/probes")]
    if not probed:
        return None
    probes = sum(int(r["fidelity/probes"]) for r in probed)
    seconds = sum(float(r["fidelity/probe_seconds"]) for r in probed)
    cosines = [float(r["fidelity/cosine"]) for r in probed]
    weights = [int(r["fidelity/probes"]) for r in probed]
    return {
        "probes": probes,
        "cosine_first": cosines[0],
        "cosine_last": cosines[-1],
        "cosine_mean": sum(c * w for c, w in zip(cosines, weights, strict=True)) / probes,
        "cosine_min": min(float(r["fidelity/cosine_min"]) for r in probed),
        "below_min": sum(int(r["fidelity/below_min"]) for r in probed),
        "norm_error_last": float(probed[-1]["fidelity/norm_error"]),
        "free_distance_last": float(probed[-1]["fidelity/free_distance"]),
        "seconds": seconds,
        "share_of_training": seconds / training_seconds if training_seconds > 0 else None,
    }
