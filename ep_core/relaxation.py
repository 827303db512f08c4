"""Relaxation to equilibrium as a pure function: states in, states and convergence statistics out.

A layer update sets s_k ← clip(∂Φ/∂s_k, 0, α_k) for hidden layers and o ← ∂Φ/∂o − β·∂C/∂o for the linear
output (the authors' fixed-point form of the nudged output; its fixed point is the exact minimiser of
E + β·C over o). Nothing here uses autograd; every drive is a closed-form conv, transposed conv or matmul.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .costs import check_cost, cost_grad
from .interactions import DenseInteraction, bias_view
from .networks import HopfieldNetwork
from .schedule import Groups, update_groups

States = list[torch.Tensor]
SOLVERS = ("fixed_point", "anderson")


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
    net: HopfieldNetwork, k: int, s: Sequence[torch.Tensor], drive, alphas: Sequence[float], nudge, cache
) -> torch.Tensor:
    u = layer_drive(net, k, s, drive, cache)
    if k == net.num_layers:  # linear output
        if nudge is not None:
            u = u.sub_(nudge.beta * cost_grad(nudge.cost, s[k], nudge.target))
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
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One iteration: every group updated once, in order, replacing entries of the list `s` (never the
    tensors). With `measure`, returns (‖s_t − s_{t−1}‖², ‖s_t‖²) as device scalars, accumulated layer by
    layer as each old state is dropped, so no copy of the previous states is ever kept."""
    diffs: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    for group, alone in zip(groups, independent, strict=True):
        if alone:
            for k in group:
                value = update_layer(net, k, s, drive, alphas, nudge, cache)
                if measure:
                    diffs.append(torch.dist(value, s[k]))
                    norms.append(torch.linalg.vector_norm(value))
                s[k] = value
        else:
            new = [(k, update_layer(net, k, s, drive, alphas, nudge, cache)) for k in group]
            for k, value in new:
                if measure:
                    diffs.append(torch.dist(value, s[k]))
                    norms.append(torch.linalg.vector_norm(value))
                s[k] = value
    if not measure:
        return None
    return torch.stack(diffs).square().sum(), torch.stack(norms).square().sum()


def _relative(measured: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype) -> float:
    diff2, norm2 = measured
    return (diff2.sqrt() / norm2.sqrt().clamp_min(torch.finfo(dtype).tiny)).item()


def check_states(net: HopfieldNetwork, x: torch.Tensor, states: Sequence[torch.Tensor]) -> None:
    if len(states) != net.num_layers:
        raise ValueError(f"{net.arch} has {net.num_layers} free layers, got {len(states)} state tensors")
    for layer, s in zip(net.layers, states, strict=True):
        if tuple(s.shape) != (x.shape[0], *layer.shape):
            raise ValueError(
                f"state {layer.name}: expected {(x.shape[0], *layer.shape)}, got {tuple(s.shape)}"
            )


def relative_change(new: Sequence[torch.Tensor], old: Sequence[torch.Tensor]) -> torch.Tensor:
    diff = sum((a - b).pow(2).sum() for a, b in zip(new, old, strict=True))
    norm = sum(a.pow(2).sum() for a in new)
    return diff.sqrt() / norm.sqrt().clamp_min(torch.finfo(new[0].dtype).tiny)


ROUNDING_ULPS = 64  # a nudged phase's rounding floor: 1.4e-14 of the states in float64, 7.6e-6 in float32


def displacement(states: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖s − reference‖² over all layers, where s may stack copies of the reference's batch."""
    return sum((t.view(-1, *r.shape) - r).square().sum() for t, r in zip(states, reference, strict=True))  # type: ignore[return-value]


def check_solver(name: str) -> str:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; valid choices: {', '.join(SOLVERS)}")
    return name


def relax(
    net: HopfieldNetwork,
    x: torch.Tensor,
    states: Sequence[torch.Tensor] | None = None,
    *,
    iterations: int,
    order: str | Groups = "even_odd",
    nudge: Nudge | None = None,
    tol: float | None = None,
    drive: list[torch.Tensor] | None = None,
    solver: str = "fixed_point",
    memory: int = 5,
    compile: bool = False,
) -> tuple[States, RelaxStats]:
    """Run up to `iterations` sweeps of block updates from `states` (zeros if None).

    With `tol`, stop as soon as the relative residual of a sweep is ≤ tol (this checks the residual every
    sweep, one device synchronisation each). `drive` is `input_drive(net, x)`, passed in to share it
    between phases. `solver="anderson"` accelerates the same sweeps with Anderson mixing of the last
    `memory` iterates, projected back onto each hidden layer's box [0, α] (`ep_core.anderson`); it
    converges to a fixed point of the same sweeps and counts one iteration per sweep. `compile` runs the
    sweeps through `torch.compile` (same results to rounding). Returns the new states (the inputs are
    never modified) and `RelaxStats`.
    """
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if tol is not None and not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive number or None, got {tol!r}")
    check_solver(solver)
    groups = update_groups(net, order) if isinstance(order, str) else order
    if states is None:
        states = net.zero_states(x.shape[0], device=x.device, dtype=x.dtype)
    check_states(net, x, states)
    if drive is None:
        drive = input_drive(net, x)
    s, stats = relax_list(
        net, [x, *states], iterations=iterations, groups=groups, nudge=nudge, tol=tol, drive=drive,
        solver=solver, memory=memory, compile=compile,
    )  # fmt: skip
    return s[1:], stats


def relax_list(
    net: HopfieldNetwork,
    s: list[torch.Tensor],
    *,
    iterations: int,
    groups: Groups,
    nudge: Nudge | None,
    tol: float | None,
    drive: list[torch.Tensor],
    solver: str = "fixed_point",
    memory: int = 5,
    cache: dict | None = None,
    compile: bool = False,
    reference: Sequence[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], RelaxStats]:
    """`relax` on a list [x, s_1, ..., s_L] that the caller hands over: its entries are replaced (the
    tensors never modified), so a state no one else holds is freed as soon as its layer is updated — no
    previous copy is kept. The states may stack copies of x's batch (x's drive is broadcast over them).
    `cache` (a dict) keeps the max-pool argmax of the final states for the caller. `compile` runs every
    sweep after the first through `torch.compile` (`ep_core.fast.compiled_sweep`). With `reference` (the
    B-example states a nudged phase started from), `tol` compares a sweep's change with the displacement
    from them instead of with the states: a nudge moves the states little, so measured against the whole
    state a nudged phase would stop long before its displacement — the EP signal — has converged. It also
    stops once a sweep changes the states by ≤ min(tol, `ROUNDING_ULPS` ulp) of their norm: below that
    the displacement cannot be resolved further (a tol of 1e-14 of a 1e-3 displacement is out of float64's
    reach), and a tol that small keeps the plain rule. The reported residual keeps its meaning (relative to
    the states)."""
    cache = {} if cache is None else cache
    alphas = net.alphas.tolist()
    independent = independent_groups(net, groups)
    with torch.no_grad():
        if solver == "anderson":
            from .anderson import anderson_relax

            return anderson_relax(
                net, s, iterations=iterations, groups=groups, nudge=nudge, tol=tol, drive=drive,
                memory=memory, cache=cache,
            )  # fmt: skip
        fast = None
        if compile:
            from .fast import compiled_sweep

            fast = compiled_sweep()
        residual = float("nan")
        done = 0
        while done < iterations:
            done += 1
            if fast is not None and done > 1:
                # One graph for every sweep of a phase: always measured, read only when needed.
                measured = fast(net, s, groups, drive, alphas, nudge, cache, independent, True)
                if tol is None and done < iterations:
                    continue
            else:
                measure = tol is not None or done == iterations
                measured = sweep(net, s, groups, drive, alphas, nudge, cache, independent, measure)
            if measured is not None:
                residual = _relative(measured, s[1].dtype)
                if tol is not None and _converged(measured[0], residual, s[1:], tol, reference):
                    break
    return s, RelaxStats(iterations=done, residual=residual)


def _converged(
    diff2: torch.Tensor, residual: float, states: list[torch.Tensor], tol: float, reference
) -> bool:
    """`relax_list`'s early stop: the sweep's change (squared norm `diff2`, `residual` relative to the
    states) against the states, or — given a nudged phase's `reference` — against its displacement, down
    to the rounding floor."""
    if reference is None:
        return residual <= tol
    dtype = states[0].dtype
    floor = min(tol, ROUNDING_ULPS * torch.finfo(dtype).eps)
    return residual <= floor or _relative((diff2, displacement(states, reference)), dtype) <= tol


def fixed_point_residual(
    net: HopfieldNetwork, x: torch.Tensor, states: Sequence[torch.Tensor], nudge: Nudge | None = None
) -> float:
    """‖s − u(s)‖ / ‖s‖ where u is one synchronous update from s: zero exactly at a fixed point."""
    with torch.no_grad():
        s = [x, *states]
        drive = input_drive(net, x)
        alphas = net.alphas.tolist()
        updated = [update_layer(net, k, s, drive, alphas, nudge, {}) for k in range(1, net.num_layers + 1)]
        return relative_change(updated, states).item()


def predict(
    net: HopfieldNetwork, x: torch.Tensor, *, iterations: int = 120, order: str | Groups = "even_odd"
) -> torch.Tensor:
    """The output state after a free relaxation from zero states (the authors' evaluation protocol)."""
    states, _ = relax(net, x, iterations=iterations, order=order)
    return states[-1]
