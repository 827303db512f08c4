"""Gradient fidelity: how far a run's truncated relaxation puts its gradient from the converged one.

A recipe that cuts the phases short (`ep.recipe: fast`, the demo's 30 / 10 sweeps) does not compute the
centered-EP gradient that `ep-core gradcheck` checks: its states stop short of the fixed points. How far is
a property of the weights, so it changes as training moves them (issue 24 measured 0.60 for a network
trained with 40 / 15 sweeps against 0.87 for the authors'-trained one). `probe` measures it on one batch,
from the same weights and with the same estimator (β, cost, estimator kind): once with the run's own phase
lengths, once with every phase relaxed to `tol` with a proper colouring (`converged`), and compares the two
unclipped gradients. Both start from zero states: a fixed probe batch has no previous batch to warm-start
from, so the figure is that of a cold start (pessimistic for a warm-started run's later batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .estimators import EquilibriumProp, GradientEstimate
from .networks import HopfieldNetwork
from .relaxation import relative_change

# The converged reference: each phase stops when a sweep changes the states by less than this (relative),
# or at the cap. Measured on a digits batch (Hopfield-ResNet13, 1/16 width, float32, at initialisation):
# the reference's gradient had cosine 0.99998 with a float64 one relaxed to 1e-11, and the probe's cosine
# for 40 / 15 sweeps read 0.9411 against 0.9427 with that float64 reference; 1e-6 read 0.9426 for ~5 %
# more sweeps, but sits nearer float32's floor, where a phase that cannot reach it runs to the cap.
REFERENCE_TOL = 1e-5
REFERENCE_CAP = 1000


def converged(
    ep: EquilibriumProp, *, tol: float = REFERENCE_TOL, cap: int = REFERENCE_CAP
) -> EquilibriumProp:
    """`ep` with every phase relaxed to `tol` (at most `cap` sweeps) by Anderson-mixed sweeps in a proper
    colouring of the couplings: the same fixed points as plain sweeps, reached in fewer of them. Unclipped,
    so that the comparison is of the gradients themselves."""
    return replace(
        ep, free_iterations=cap, nudge_iterations=cap, tol=tol, nudge_tol=tol, order="coloring",
        solver="anderson", nudge_solver="anderson", batch_phases=True, omega=1.0, nudge_omega=None,
        clip_norm=None, cuda_graphs=False, bf16_sweeps=0, compile=False,
    )  # fmt: skip


def own(ep: EquilibriumProp) -> EquilibriumProp:
    """The run's estimator as the probe runs it: its own phases, unclipped (clipping rescales the whole
    gradient, which the cosine ignores but the norm error would not)."""
    return replace(ep, clip_norm=None, cuda_graphs=False)


@dataclass
class Fidelity:
    """One probe: the run's estimate against the converged one, from the same weights on the same batch."""

    cosine: float  # of the two gradients, all parameter tensors as one vector
    norm_error: float  # ‖g − g*‖ / ‖g*‖
    free_distance: float  # ‖s − s*‖ / ‖s*‖ of the run's free state from the free fixed point
    tensor_cosines: dict[str, float]  # per parameter tensor
    reference_sweeps: int  # sweeps of the converged reference's free phase plus its nudged phase
    reference_residual: float  # the worst final relative change of the reference's phases

    def row(self) -> dict[str, float]:
        """The probe as history columns (`fidelity/…`, MLflow's chart group of the same name)."""
        row = {
            "fidelity/cosine": self.cosine,
            "fidelity/norm_error": self.norm_error,
            "fidelity/free_distance": self.free_distance,
            "fidelity/reference_sweeps": float(self.reference_sweeps),
            "fidelity/reference_residual": self.reference_residual,
        }
        return row | {f"fidelity/cosine.{name}": c for name, c in self.tensor_cosines.items()}


def gradient_cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine of two gradients (dicts of tensors with the same names) as single vectors; 0 if one is 0."""
    dot = sum((a[n].double() * b[n].double()).sum() for n in b)
    norms = math.sqrt(_square(a) * _square(b))
    return float(dot) / norms if norms > 0 else 0.0


def _square(g: dict[str, torch.Tensor]) -> float:
    return float(sum(t.double().pow(2).sum() for t in g.values()))


def relative_error(g: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """‖g − g*‖ / ‖g*‖ over all of `reference`'s tensors together (in float64)."""
    return math.sqrt(_square({n: g[n] - r for n, r in reference.items()}) / max(_square(reference), 1e-300))


def compare(estimate: GradientEstimate, reference: GradientEstimate) -> Fidelity:
    """The figures of `estimate` against `reference` (both kept their free states)."""
    g, r = estimate.grads, reference.grads
    error = relative_error(g, r)
    tensors = {n: gradient_cosine({n: g[n]}, {n: r[n]}) for n in r}
    stats = reference.stats
    return Fidelity(
        cosine=gradient_cosine(g, r),
        norm_error=error,
        free_distance=relative_change(reference.free_states, estimate.free_states).item(),
        tensor_cosines=tensors,
        reference_sweeps=stats["free"].iterations + stats["nudged"].iterations,
        reference_residual=max(stats["free"].residual, stats["nudged"].residual),
    )


@torch.no_grad()
def probe(
    net: HopfieldNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    ep: EquilibriumProp,
    *,
    tol: float = REFERENCE_TOL,
    cap: int = REFERENCE_CAP,
    reference: GradientEstimate | None = None,
) -> tuple[Fidelity, GradientEstimate]:
    """`ep`'s gradient on (x, y) against the converged one, both from zero states; also returns the
    converged estimate, which a caller comparing several phase lengths at the same weights passes back as
    `reference` instead of relaxing it again."""
    if reference is None:
        reference = converged(ep, tol=tol, cap=cap).estimate(net, x, y, None)
    estimate = own(ep).estimate(net, x, y, None)
    return compare(estimate, reference), reference
