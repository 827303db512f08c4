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
from .interactions import bias_view
from .networks import HopfieldNetwork
from .schedule import Groups, update_groups

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


def layer_drive(net: HopfieldNetwork, k: int, s: Sequence[torch.Tensor], drive, cache: dict) -> torch.Tensor:
    """∂Φ/∂s_k at the states s (s[0] is the input)."""
    total = None
    for edge in net.incoming[k]:
        if edge.pre > 0:
            term = edge.drive_post(s[edge.pre], cache)
            total = term if total is None else total.add_(term)
    for edge in net.outgoing[k]:
        term = edge.drive_pre(s[edge.post], s[k], cache)
        total = term if total is None else total.add_(term)
    constant = drive[k - 1]
    return constant.expand_as(s[k]).clone() if total is None else total.add_(constant)


def update_layer(
    net: HopfieldNetwork, k: int, s: Sequence[torch.Tensor], drive, alphas: Sequence[float], nudge, cache
) -> torch.Tensor:
    u = layer_drive(net, k, s, drive, cache)
    if k == net.num_layers:  # linear output
        if nudge is not None:
            u = u.sub_(nudge.beta * cost_grad(nudge.cost, s[k], nudge.target))
        return u
    return u.clamp_(0.0, alphas[k - 1])


def _check_states(net: HopfieldNetwork, x: torch.Tensor, states: Sequence[torch.Tensor]) -> None:
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
) -> tuple[States, RelaxStats]:
    """Run up to `iterations` sweeps of block updates from `states` (zeros if None).

    With `tol`, stop as soon as the relative residual of a sweep is ≤ tol (this checks the residual every
    sweep, one device synchronisation each). `drive` is `input_drive(net, x)`, passed in to share it
    between phases. Returns the new states (the inputs are never modified) and `RelaxStats`.
    """
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if tol is not None and not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive number or None, got {tol!r}")
    groups = update_groups(net, order) if isinstance(order, str) else order
    if states is None:
        states = net.zero_states(x.shape[0], device=x.device, dtype=x.dtype)
    _check_states(net, x, states)
    if drive is None:
        drive = input_drive(net, x)
    alphas = net.alphas.tolist()
    s = [x, *states]
    cache: dict = {}
    previous = s
    done = 0
    with torch.no_grad():
        while done < iterations:
            previous = list(s)
            for group in groups:
                new = [(k, update_layer(net, k, s, drive, alphas, nudge, cache)) for k in group]
                for k, value in new:
                    s[k] = value
            done += 1
            if tol is not None and relative_change(s[1:], previous[1:]).item() <= tol:
                break
        residual = relative_change(s[1:], previous[1:]).item() if done else float("nan")
    return s[1:], RelaxStats(iterations=done, residual=residual)


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
