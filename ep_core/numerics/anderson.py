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

from collections.abc import Callable, Sequence
from functools import partial

import torch

from .networks import HopfieldNetwork
from .orders import Groups
from .sweep import Nudge, RelaxStats, StopTest, independent_groups, sweep

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
    omega: float = 1.0,
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
    alphas = net.alphas.tolist()
    cache = {} if cache is None else cache
    apply = partial(sweep, net, groups=groups, drive=drive, alphas=alphas, nudge=nudge, cache=cache,
                    independent=independent_groups(net, groups), omega=omega)  # fmt: skip
    x0 = s[0]
    B = s[1].shape[0]  # may be a multiple of x's batch (stacked phases share x's drive)
    dtype = s[1].dtype
    shapes = [tuple(t.shape) for t in s[1:]]
    mixer = _Mixer(memory, B // 2 if pairs else B, pairs, alphas, s[1])
    # The checked states are G(x_t), not the iterates x_t, so the displacement bound does not apply.
    stop = StopTest(tol, reference, dtype, bounded=False) if tol is not None else None
    residual = float("nan")
    done = 0
    current = g = [t.reshape(B, -1) for t in s[1:]]  # x_k, flattened per layer (views)
    while done < iterations:
        done += 1
        g = _swept(apply, x0, current, shapes)
        f = [gl - xl for gl, xl in zip(g, current, strict=True)]
        del current  # x_k is not needed any more: one copy of the states less while mixing
        f2 = mixer.per_problem(_per_example_square(f))  # ‖f‖² of each mixing problem
        if tol is not None or done == iterations:
            residual = _relative_residual(f2, g, dtype)
            if done == iterations:
                break
            views = [gl.view(shape) for gl, shape in zip(g, shapes, strict=True)]
            if stop is not None and stop(f2.sum(), residual, views):
                break
        current = mixer.next_iterate(f, g, f2)
    return [x0, *(gl.view(shape) for gl, shape in zip(g, shapes, strict=True))], RelaxStats(done, residual)


def _swept(
    apply: Callable[[list[torch.Tensor]], object],
    x0: torch.Tensor,
    current: list[torch.Tensor],
    shapes: list[tuple[int, ...]],
) -> list[torch.Tensor]:
    """G(x_k): one sweep (`apply`, on the list [x, s_1, ..., s_L]) from the flattened iterate `current`, its
    outputs flattened per layer like it."""
    lst = [x0, *(c.view(shape) for c, shape in zip(current, shapes, strict=True))]
    apply(lst)
    return [t.reshape(t.shape[0], -1) for t in lst[1:]]


def _relative_residual(f2: torch.Tensor, g: list[torch.Tensor], dtype: torch.dtype) -> float:
    """‖f‖ / ‖G(x_k)‖ over the whole batch, from the per-problem ‖f‖² `f2` and the sweep's outputs `g`."""
    g2 = _per_example_square(g).sum()
    return (f2.sum().sqrt() / g2.sqrt().clamp_min(torch.finfo(dtype).tiny)).item()


class _Mixer:
    """Anderson's state between sweeps: the last sweep's residuals f and outputs g, the history of their
    differences, which history slots each mixing problem (an example, or with `pairs` an example and its copy
    B/2 further) may use, and each problem's last ‖f‖² for the safeguard."""

    def __init__(self, memory: int, problems: int, pairs: bool, alphas: list[float], like: torch.Tensor):
        self.memory, self.problems, self.pairs = memory, problems, pairs
        self.alphas, self.dtype = alphas, like.dtype
        self.history: History | None = None
        self.pushes = 0  # differences stored so far; the next goes to the slot of the oldest
        self.valid = torch.zeros(problems, memory, dtype=torch.bool, device=like.device)
        self.f_prev: list[torch.Tensor] = []
        self.g_prev: list[torch.Tensor] = []
        self.r_prev = torch.zeros(problems, dtype=like.dtype, device=like.device)

    def per_problem(self, f2: torch.Tensor) -> torch.Tensor:
        """Per example values (B,) summed over the examples of each mixing problem, (problems,)."""
        return f2[: self.problems] + f2[self.problems :] if self.pairs else f2

    def next_iterate(
        self, f: list[torch.Tensor], g: list[torch.Tensor], f2: torch.Tensor
    ) -> list[torch.Tensor]:
        """x_{k+1} from this sweep's residuals `f`, outputs `g` and per-problem ‖f‖² `f2`: the plain step
        G(x_k) after the first sweep (there is no difference yet), the projected mixed step after it."""
        current = self._mixed(f, g, f2) if self.f_prev else g
        self.f_prev, self.g_prev, self.r_prev = f, g, f2
        return current

    def _mixed(self, f: list[torch.Tensor], g: list[torch.Tensor], f2: torch.Tensor) -> list[torch.Tensor]:
        """Store the new differences, drop the history of the problems whose residual grew, and mix."""
        if self.history is None:
            self.history = History(f, self.memory)
        slot = self.pushes % self.memory
        self.pushes += 1
        rhs = self.history.push(slot, f, g, self.f_prev, self.g_prev)
        self.valid[:, slot] = True
        # Safeguard: an example whose residual grew (typically a unit crossed a clip boundary, so the
        # sweep map moved to another linear piece) forgets its history and takes the plain step.
        self.valid &= (f2 <= self.r_prev).view(self.problems, 1)
        gamma = _mixing(self.history.gram, rhs, self.valid, self.dtype, self.pairs)  # (B, 1, m), 0 if invalid
        return _projected(g, gamma, self.history.dG, self.alphas)


def _projected(
    g: list[torch.Tensor], gamma: torch.Tensor, dG: list[torch.Tensor], alphas: list[float]
) -> list[torch.Tensor]:
    """P(G(x_k) − ΔG γ), layer by layer: each hidden layer clipped to its box [0, α_k], the output not."""
    mixed = []
    for i, (gl, dGl) in enumerate(zip(g, dG, strict=True)):
        layer = torch.baddbmm(gl.unsqueeze(1), gamma, dGl, alpha=-1).squeeze(1)
        if i < len(g) - 1:
            layer.clamp_(0.0, alphas[i])
        mixed.append(layer)
    return mixed


class History:
    """The last `memory` differences ΔF = f_k − f_{k−1} and ΔG = g_k − g_{k−1} per example (a ring buffer of
    (B, m, n_l) tensors per layer) and the Gram matrix ΔFᵀΔF of each example's normal equations.

    The Gram matrix is kept up to date incrementally: with f_k = f_{k−1} + ΔF_new, ΔF_i·ΔF_new =
    ΔF_i·f_k − ΔF_i·f_{k−1}, so the one pass over the history that gives this iteration's right-hand side
    ΔFᵀf_k also gives the Gram matrix's new row (instead of an m-fold pass for ΔFᵀΔF every iteration).
    """

    def __init__(self, f: list[torch.Tensor], memory: int):
        B = f[0].shape[0]
        self.dF = [fl.new_zeros(B, memory, fl.shape[1]) for fl in f]
        self.dG = [fl.new_zeros(B, memory, fl.shape[1]) for fl in f]
        self.gram = torch.zeros(B, memory, memory, dtype=torch.float64, device=f[0].device)
        self._rhs_prev = torch.zeros(B, memory, dtype=torch.float64, device=f[0].device)

    def push(
        self,
        slot: int,
        f: list[torch.Tensor],
        g: list[torch.Tensor],
        f_prev: list[torch.Tensor],
        g_prev: list[torch.Tensor],
    ) -> torch.Tensor:
        """Store the new differences in `slot` (replacing the oldest) and return ΔFᵀf, (B, m) float64."""
        for dF, dG, fl, gl, fp, gp in zip(self.dF, self.dG, f, g, f_prev, g_prev, strict=True):
            torch.sub(fl, fp, out=dF[:, slot])
            torch.sub(gl, gp, out=dG[:, slot])
        rhs = sum(torch.bmm(d, fl.unsqueeze(2)) for d, fl in zip(self.dF, f, strict=True)).squeeze(2).double()
        row = rhs - self._rhs_prev  # ΔF_i·ΔF_new for the slots other than the new one
        row[:, slot] = _per_example_square([d[:, slot] for d in self.dF]).double()
        self.gram[:, slot, :] = row
        self.gram[:, :, slot] = row
        self._rhs_prev = rhs
        return rhs


def _per_example_square(parts: list[torch.Tensor]) -> torch.Tensor:
    """Σ over the (B, n_l) parts of each row's squared norm, as (B,)."""
    return torch.stack([torch.linalg.vector_norm(p, dim=1).square() for p in parts]).sum(0)


def _mixing(
    gram: torch.Tensor, rhs: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype, pairs: bool = False
) -> torch.Tensor:
    """Per example γ = argmin ‖f − ΔF γ‖ over its valid history slots (γ = 0 on the others), as (B, 1, m),
    from the normal equations `gram` γ = `rhs` ((B, m, m) and (B, m), float64); with `pairs`, one γ for
    each example and its copy B/2 further, from their summed normal equations."""
    rhs = rhs.unsqueeze(2)
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
    gamma = (gamma * v.unsqueeze(2)).to(dtype).transpose(1, 2)
    return torch.cat([gamma, gamma]) if pairs else gamma
