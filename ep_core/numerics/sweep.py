"""One sweep of block updates: the layer drives ∂Φ/∂s_k, the clipped update, and the sweep over update groups.

Every solver (`relaxation`'s plain fixed-point iteration, `anderson`, the compiled and graphed phases of
`fast`) is built on `sweep`; this module imports none of them, so they depend on it and `relaxation` picks
a solver from its registry without an import circle. A layer update sets s_k ← clip(∂Φ/∂s_k, 0, α_k) for
hidden layers and o ← ∂Φ/∂o − β·∂C/∂o for the linear output (the authors' fixed-point form of the nudged
output; its fixed point is the exact minimiser of E + β·C over o).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .costs import check_cost, cost_grad
from .interactions import DenseInteraction, bias_view
from .networks import HopfieldNetwork
from .orders import Groups

States = list[torch.Tensor]


@dataclass(frozen=True)
class RelaxStats:
    """What one relaxation did: iterations run and the final relative residual ‖s_t − s_{t−1}‖ / ‖s_t‖
    (2-norms over all free layers and the whole batch)."""

    iterations: int
    residual: float

    def as_dict(self) -> dict[str, float]:
        return {"iterations": self.iterations, "residual": self.residual}


@dataclass(frozen=True)
class Nudge:
    """The force β·∂C/∂o on the output. `beta` is a number or a (B, 1) tensor (one β per example, which
    lets the −β and +β phases of centered EP run as one batch)."""

    target: torch.Tensor  # one-hot, (B, n_out)
    beta: float | torch.Tensor
    cost: str = "mse"

    def __post_init__(self) -> None:
        check_cost(self.cost)


def input_drive(net: HopfieldNetwork, x: torch.Tensor) -> list[torch.Tensor]:
    """The constant part of ∂Φ/∂s_k for every free layer (bias plus the drive from the clamped input),
    computed once per batch and shared by all phases. Entry k−1 belongs to layer k."""
    drive = []
    for k, layer in enumerate(net.layers, start=1):
        d = bias_view(net.biases[layer.name], layer.shape)
        for edge in net.incoming[k]:
            if edge.pre == 0:
                d = edge.drive_post(x) + d
        drive.append(d)
    return drive


def add_constant(total: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """total += constant in place. A constant with a batch dimension that divides total's (the input drive of
    a batch shared by stacked copies of it, as in the stacked ±β phases) is broadcast over the copies, so
    stacking never materialises repeated drives."""
    n = constant.shape[0]
    if n in (1, total.shape[0]):
        return total.add_(constant)
    total.view(total.shape[0] // n, n, *total.shape[1:]).add_(constant)
    return total


def layer_drive(net: HopfieldNetwork, k: int, s: Sequence[torch.Tensor], drive, cache: dict) -> torch.Tensor:
    """∂Φ/∂s_k at the states s (s[0] is the input), accumulated in place into the first drive computed. A
    bias-only constant drive is added inside that first kernel (its `bias=`), not by a separate pass."""
    constant = drive[k - 1]
    bias_only = not any(edge.pre == 0 for edge in net.incoming[k])  # then constant is (1, C, 1, 1) or (1, n)
    bias = constant.reshape(-1) if bias_only else None
    total = None
    for edge in net.incoming[k]:
        if edge.pre > 0:
            if total is None and bias is not None:
                total, bias = edge.drive_post(s[edge.pre], cache, bias=bias), None
            else:
                term = edge.drive_post(s[edge.pre], cache)
                total = term if total is None else total.add_(term)
    for edge in net.outgoing[k]:
        if total is None and bias is not None and not isinstance(edge, DenseInteraction):
            total, bias = edge.drive_pre(s[edge.post], s[k], cache, bias=bias), None
        else:
            term = edge.drive_pre(s[edge.post], s[k], cache)
            total = term if total is None else total.add_(term)
    if total is None:
        total = torch.zeros_like(s[k])
    if bias_only and bias is None:
        return total  # the bias went in with the first term
    return add_constant(total, constant)


def update_layer(
    net: HopfieldNetwork,
    k: int,
    s: Sequence[torch.Tensor],
    drive,
    alphas: Sequence[float],
    nudge,
    cache,
    omega: float = 1.0,
) -> torch.Tensor:
    """Layer k's new state: the block minimiser u of the energy given its neighbours, or with `omega` ≠ 1
    the projected over-relaxed step clip(s_k + ω(u − s_k)) (SOR; the same fixed points, see `sweep`)."""
    u = layer_drive(net, k, s, drive, cache)
    if k == net.num_layers and nudge is not None:  # linear output
        u = u.sub_(nudge.beta * cost_grad(nudge.cost, s[k], nudge.target))
    if omega != 1.0:
        u = torch.lerp(s[k], u, omega)
    if k == net.num_layers:
        return u
    return u.clamp_(0.0, alphas[k - 1])


def independent_groups(net: HopfieldNetwork, groups: Groups) -> list[bool]:
    """Per group, whether no coupling joins two of its layers (then each layer can be replaced as soon as it
    is computed, which frees its old state early; a coupled group, like even_odd's on Hopfield-ResNet, is
    a Jacobi step and must read only old states)."""
    edges = net.free_edges()
    return [not any(a in g and b in g for a, b in edges) for g in (set(group) for group in groups)]


def sweep(
    net: HopfieldNetwork,
    s: list[torch.Tensor],
    groups: Groups,
    drive,
    alphas: Sequence[float],
    nudge,
    cache: dict,
    independent: Sequence[bool],
    measure: bool = False,
    omega: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One iteration: every group updated once, in order, replacing entries of the list `s` (never the
    tensors). With `measure`, returns (‖s_t − s_{t−1}‖², ‖s_t‖²) as device scalars, accumulated layer by
    layer as each old state is dropped, so no copy of the previous states is ever kept.

    `omega` ≠ 1 over-relaxes every layer update (projected successive over-relaxation, SOR): a layer moves
    ω times as far as its block minimiser would take it, then back into its box. A fixed point of either
    iteration is one of the other (s = clip(s + ω(u − s)) holds exactly when s = clip(u)), and on the
    near-linear nudged phases ω ≈ 1.5 cuts the sweeps to a given error about threefold at no cost per sweep
    (docs/benchmarks.md). It needs groups that are a proper colouring (`check_omega`): a group of coupled
    layers is a Jacobi step, and over-relaxed Jacobi steps diverge on Hopfield-ResNet."""
    diffs: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    for group, alone in zip(groups, independent, strict=True):
        if alone:
            for k in group:
                value = update_layer(net, k, s, drive, alphas, nudge, cache, omega)
                if measure:
                    diffs.append(torch.dist(value, s[k]))
                    norms.append(torch.linalg.vector_norm(value))
                s[k] = value
        else:
            new = [(k, update_layer(net, k, s, drive, alphas, nudge, cache, omega)) for k in group]
            for k, value in new:
                if measure:
                    diffs.append(torch.dist(value, s[k]))
                    norms.append(torch.linalg.vector_norm(value))
                s[k] = value
    if not measure:
        return None
    return torch.stack(diffs).square().sum(), torch.stack(norms).square().sum()


def relative_residual(measured: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype) -> float:
    """√diff² / √norm² of `sweep(measure=True)`'s pair, as a float (one device synchronisation)."""
    diff2, norm2 = measured
    return (diff2.sqrt() / norm2.sqrt().clamp_min(torch.finfo(dtype).tiny)).item()


ROUNDING_ULPS = 64  # a nudged phase's rounding floor: 1.4e-14 of the states in float64, 7.6e-6 in float32


def displacement(states: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖s − reference‖² over all layers, where s may stack copies of the reference's batch."""
    return sum((t.view(-1, *r.shape) - r).square().sum() for t, r in zip(states, reference, strict=True))  # type: ignore[return-value]


class StopTest:
    """Every solver's early stop for one phase. A sweep whose change has squared norm `diff2` (`residual`
    relative to the states) has converged when `residual` ≤ tol or — given a nudged phase's `reference`,
    the B-example states it started from — when the change is ≤ tol of the displacement D = ‖s − reference‖,
    or below the rounding floor min(tol, `ROUNDING_ULPS` ulp) of the states (finer displacements cannot be
    resolved in that precision).

    D costs a pass over the states, so it is computed only when it can decide: by the triangle inequality
    D_t ≤ D_{t−1} + ‖s_t − s_{t−1}‖, so while the change exceeds tol of that bound the phase has certainly
    not converged. The bound is reset to the exact D each time D is computed; the stopping decisions are
    those of computing D every sweep. The bound needs the change to
    be the step from the previous checked states, as in the plain iteration; a solver whose checked states
    are not its iterates (Anderson checks G(x_t), not x_t) passes `bounded=False` and gets D every sweep."""

    def __init__(
        self, tol: float, reference: Sequence[torch.Tensor] | None, dtype: torch.dtype, bounded: bool = True
    ):
        self.tol = tol
        self.reference = reference
        self.bounded = bounded
        self.floor = min(tol, ROUNDING_ULPS * torch.finfo(dtype).eps)
        self.bound: float | None = None  # an upper bound of the current D

    def __call__(self, diff2: torch.Tensor, residual: float, states: Sequence[torch.Tensor]) -> bool:
        if self.reference is None:
            return residual <= self.tol
        if residual <= self.floor:
            return True
        diff = diff2.sqrt().item()
        if self.bounded and self.bound is not None:
            # 1e-5: float32 rounding of the norms must not turn the bound into an underestimate
            self.bound += diff * (1 + 1e-5)
            if diff > self.tol * self.bound * (1 + 1e-5):
                return False
        self.bound = displacement(states, self.reference).sqrt().item()
        return diff <= self.tol * self.bound
