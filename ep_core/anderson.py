"""Anderson acceleration of the relaxation, adapted to the clipped (box-projected) fixed-point iteration.

Let G be one sweep of block updates (any update order) and x_k the current states. Anderson mixing (type
II, Walker & Ni 2011) keeps the last m differences ΔF_i = f_{i+1} − f_i of the residuals f = G(x) − x and
ΔG_i of the sweep outputs, and takes

    γ = argmin_γ ‖f_k − ΔF γ‖²,      x_{k+1} = P(G(x_k) − ΔG γ),

with P the projection onto each hidden layer's box [0, α_k] (the output layer is unbounded). Everything
is per example: the least-squares problems are solved independently for each example of the batch (B
small m×m systems, in float64 with a relative Tikhonov term), so one example's geometry never steers
another's. Safeguard: an example whose residual norm grew since the last iteration forgets its history
and takes the plain step G(x_k). (Restarting on clip-boundary crossings instead was tried: at init the
active set of Hopfield-ResNet keeps changing for hundreds of sweeps, and such restarts only slowed it.)

At a fixed point f = 0, so x = G(x): the accelerated iteration converges to a fixed point of the very
same sweeps as `relax` does, and each iteration costs one sweep plus O(m) passes over the states (the
memory holds 2m + 4 copies of the states). Iterations are counted in sweeps, so budgets and `tol`
compare directly with the plain fixed-point iteration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .networks import HopfieldNetwork
from .schedule import Groups
from .sweep import Nudge, RelaxStats, converged, independent_groups, sweep

REGULARIZATION = 1e-10  # relative Tikhonov term on the m×m normal equations


def anderson_relax(
    net: HopfieldNetwork,
    s: list[torch.Tensor],
    *,
    iterations: int,
    groups: Groups,
    nudge: Nudge | None,
    tol: float | None,
    drive: list[torch.Tensor],
    memory: int = 5,
    cache: dict | None = None,
    reference: Sequence[torch.Tensor] | None = None,
    pairs: bool = False,
    **_: object,
) -> tuple[list[torch.Tensor], RelaxStats]:
    """Anderson-accelerated relaxation on the list [x, s_1, ..., s_L] (entries replaced, tensors never
    modified); the same contract as `relaxation.relax_list`, `reference` and `pairs` included. With
    `pairs`, example b and example b + B/2 (its −β and +β copies) solve one least-squares problem over
    both residuals and share its coefficients and its restarts, so the two nudged phases are mixed
    alike and the truncation error still cancels in their difference."""
    if not isinstance(memory, int) or memory < 1:
        raise ValueError(f"anderson memory must be a positive integer, got {memory!r}")
    if pairs and s[1].shape[0] % 2:
        raise ValueError(f"paired Anderson needs an even number of stacked examples, got {s[1].shape[0]}")
    cache = {} if cache is None else cache
    alphas = net.alphas.tolist()
    independent = independent_groups(net, groups)
    x0 = s[0]
    B = s[1].shape[0]  # may be a multiple of x's batch (stacked phases share x's drive)
    L = net.num_layers
    dtype = s[1].dtype
    shapes = [tuple(t.shape) for t in s[1:]]
    current = [t.reshape(B, -1) for t in s[1:]]  # x_k, flattened per layer (views)
    dF: list[torch.Tensor] = []
    dG: list[torch.Tensor] = []
    P = B // 2 if pairs else B  # independent mixing problems
    valid = torch.zeros(P, memory, dtype=torch.bool, device=s[1].device)
    f_prev: list[torch.Tensor] = []
    g_prev: list[torch.Tensor] = []
    r_prev = torch.zeros(P, dtype=dtype, device=s[1].device)
    residual = float("nan")
    done = 0
    while done < iterations:
        done += 1
        lst = [x0, *(c.view(shape) for c, shape in zip(current, shapes, strict=True))]
        sweep(net, lst, groups, drive, alphas, nudge, cache, independent)
        g = [t.reshape(B, -1) for t in lst[1:]]
        f = [gl - xl for gl, xl in zip(g, current, strict=True)]
        f2 = torch.stack([torch.linalg.vector_norm(fl, dim=1).square() for fl in f]).sum(
            0
        )  # per example ‖f‖²
        if pairs:
            f2 = f2[:P] + f2[P:]
        if tol is not None or done == iterations:
            g2 = torch.stack([torch.linalg.vector_norm(gl).square() for gl in g]).sum()
            residual = (f2.sum().sqrt() / g2.sqrt().clamp_min(torch.finfo(dtype).tiny)).item()
            if done == iterations:
                break
            views = [gl.view(shape) for gl, shape in zip(g, shapes, strict=True)]
            if converged(f2.sum(), residual, views, tol, reference):
                break
        if f_prev:
            if not dF:
                dF = [fl.new_zeros(B, memory, fl.shape[1]) for fl in f]
                dG = [gl.new_zeros(B, memory, gl.shape[1]) for gl in g]
            slot = (done - 2) % memory
            for i in range(L):
                torch.sub(f[i], f_prev[i], out=dF[i][:, slot])
                torch.sub(g[i], g_prev[i], out=dG[i][:, slot])
            valid[:, slot] = True
            # Safeguard: an example whose residual grew (typically a unit crossed a clip boundary, so the
            # sweep map moved to another linear piece) forgets its history and takes the plain step.
            valid &= (f2 <= r_prev).view(P, 1)
            gamma = _mixing(dF, f, valid, pairs)  # (B, 1, m), zero for invalid slots
            current = []
            for i in range(L):
                mixed = torch.baddbmm(g[i].unsqueeze(1), gamma, dG[i], alpha=-1).squeeze(1)
                if i < L - 1:
                    mixed.clamp_(0.0, alphas[i])
                current.append(mixed)
        else:
            current = g
        f_prev, g_prev, r_prev = f, g, f2
    else:
        g = current
    return [x0, *(gl.view(shape) for gl, shape in zip(g, shapes, strict=True))], RelaxStats(done, residual)


def _mixing(
    dF: list[torch.Tensor], f: list[torch.Tensor], valid: torch.Tensor, pairs: bool = False
) -> torch.Tensor:
    """Per example γ = argmin ‖f − ΔF γ‖ over its valid history slots (γ = 0 on the others), as (B, 1, m);
    with `pairs`, one γ for each example and its copy B/2 further, from their summed normal equations."""
    gram = sum(torch.bmm(d, d.transpose(1, 2)) for d in dF).double()
    rhs = sum(torch.bmm(d, fl.unsqueeze(2)) for d, fl in zip(dF, f, strict=True)).double()
    if pairs:
        half = gram.shape[0] // 2
        gram, rhs = gram[:half] + gram[half:], rhs[:half] + rhs[half:]
    v = valid.to(gram.dtype)
    mask = v.unsqueeze(2) * v.unsqueeze(1)
    m = gram.shape[-1]
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    scale = (gram.diagonal(dim1=1, dim2=2) * v).sum(1, keepdim=True) / v.sum(1, keepdim=True).clamp_min(1)
    scale = scale.clamp_min(1e-200).unsqueeze(2)
    system = gram * mask + eye * (REGULARIZATION * scale + (1 - v).unsqueeze(2))
    gamma, _ = torch.linalg.solve_ex(system, rhs * v.unsqueeze(2))
    gamma = (gamma * v.unsqueeze(2)).to(f[0].dtype).transpose(1, 2)
    return torch.cat([gamma, gamma]) if pairs else gamma
