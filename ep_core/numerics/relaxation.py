"""Relaxation to equilibrium as a pure function: states in, states and convergence statistics out.

The sweep of block updates itself is `ep_core.numerics.sweep`; this module runs sweeps until a budget or a
tolerance, with a solver picked by name from `SOLVERS` (the plain fixed-point iteration here, Anderson
mixing in `ep_core.numerics.anderson`). Nothing here uses autograd; every drive is a closed-form
conv, transposed conv or matmul.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .anderson import anderson_relax
from .compiled import compiled_sweep
from .networks import HopfieldNetwork
from .orders import Groups, check_omega, update_groups
from .sweep import (  # noqa: F401  (re-exported: the relaxation's public names live here)
    ROUNDING_ULPS,
    Nudge,
    RelaxStats,
    States,
    StopTest,
    displacement,
    independent_groups,
    input_drive,
    relative_residual,
    sweep,
    update_layer,
)


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
    omega: float = 1.0,
) -> tuple[States, RelaxStats]:
    """Run up to `iterations` sweeps of block updates from `states` (zeros if None).

    With `tol`, stop as soon as the relative residual of a sweep is ≤ tol (this checks the residual every
    sweep, one device synchronisation each). `drive` is `input_drive(net, x)`, passed in to share it
    between phases. `solver="anderson"` accelerates the same sweeps with Anderson mixing of the last
    `memory` iterates, projected back onto each hidden layer's box [0, α] (`ep_core.numerics.anderson`); it
    converges to a fixed point of the same sweeps and counts one iteration per sweep. `compile` runs the
    sweeps through `torch.compile` (same results to rounding). `omega` over-relaxes every layer update
    (SOR, `sweep.sweep`; the order must then be a proper colouring). Returns the new states (the inputs
    are never modified) and `RelaxStats`.
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
        solver=solver, memory=memory, compile=compile, omega=omega,
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
    pairs: bool = False,
    omega: float = 1.0,
) -> tuple[list[torch.Tensor], RelaxStats]:
    """`relax` on a list [x, s_1, ..., s_L] that the caller hands over: its entries are replaced (the
    tensors never modified), so a state no one else holds is freed as soon as its layer is updated — no
    previous copy is kept. The states may stack copies of x's batch (x's drive is broadcast over them).
    `cache` (a dict) keeps the max-pool argmax of the final states for the caller. `compile` runs every
    sweep after the first through `torch.compile` (`ep_core.numerics.compiled.compiled_sweep`;
    fixed-point solver).
    With `reference` (the B-example states a nudged phase started from), `tol` compares a sweep's change
    with the displacement from them instead of with the states (`sweep.StopTest`): a nudge moves the
    states little, so measured against the whole state a nudged phase would stop long before its
    displacement — the EP signal — has converged. `pairs` (Anderson) tells that the states stack two
    copies of the batch, the −β and +β phases of centered EP, which then share their mixing coefficients.
    `omega` over-relaxes every layer update (`sweep.sweep`; checked by `schedule.check_omega`). The
    reported residual keeps its meaning (relative to the states)."""
    cache = {} if cache is None else cache
    omega = check_omega(omega, net, groups)
    with torch.no_grad():
        return SOLVERS[check_solver(solver)](
            net, s, iterations=iterations, groups=groups, nudge=nudge, tol=tol, drive=drive, memory=memory,
            cache=cache, compile=compile, reference=reference, pairs=pairs, omega=omega,
        )  # fmt: skip


def fixed_point_relax(
    net: HopfieldNetwork,
    s: list[torch.Tensor],
    *,
    iterations: int,
    groups: Groups,
    nudge: Nudge | None,
    tol: float | None,
    drive: list[torch.Tensor],
    cache: dict,
    compile: bool = False,
    reference: Sequence[torch.Tensor] | None = None,
    omega: float = 1.0,
    **_: object,
) -> tuple[list[torch.Tensor], RelaxStats]:
    """The plain iteration s ← G(s) of `sweep`: the authors' relaxation (over-relaxed with `omega` ≠ 1)."""
    alphas = net.alphas.tolist()
    independent = independent_groups(net, groups)
    fast = compiled_sweep() if compile else None
    stop = StopTest(tol, reference, s[1].dtype) if tol is not None else None
    residual = float("nan")
    done = 0
    while done < iterations:
        done += 1
        if fast is not None and done > 1:
            # One graph for every sweep of a phase: always measured, read only when needed.
            measured = fast(net, s, groups, drive, alphas, nudge, cache, independent, True, omega)
            if tol is None and done < iterations:
                continue
        else:
            measure = tol is not None or done == iterations
            measured = sweep(net, s, groups, drive, alphas, nudge, cache, independent, measure, omega)
        if measured is not None:
            residual = relative_residual(measured, s[1].dtype)
            if stop is not None and stop(measured[0], residual, s[1:]):
                break
    return s, RelaxStats(iterations=done, residual=residual)


# The solvers by name: each takes relax_list's arguments and returns (the list, RelaxStats).
SOLVERS: dict[str, Callable[..., tuple[list[torch.Tensor], RelaxStats]]] = {
    "fixed_point": fixed_point_relax,
    "anderson": anderson_relax,
}


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
