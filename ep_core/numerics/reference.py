"""The true gradient of the loss at the free fixed point, by implicit differentiation — independent of EP.

At a fixed point s* = clip(∂Φ/∂s(s*, θ)) the units strictly inside their box (mask M; the linear output is
always inside) satisfy s_A = ∂Φ/∂s_A while clipped units stay put. Differentiating,

    (I − M Φ_ss M) ds/dθ = M Φ_sθ,     so     dL/dθ = λᵀ M Φ_sθ   with   (I − M Φ_ss M) λ = ∂L/∂s.

H = I − M Φ_ss M is the Hessian of the energy on the active set: symmetric, and positive definite at a
strict minimum, so λ comes from conjugate gradients. Every Hessian-vector product Φ_ss v and the final
λᵀ M Φ_sθ use torch.autograd on the differentiable Φ — none of the closed-form drives or Hebbian terms
that EP uses — so agreement between the two is a real check of the estimator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .costs import cost_value, one_hot
from .networks import HopfieldNetwork


@dataclass
class ReferenceGradient:
    grads: dict[str, torch.Tensor]
    loss: float
    cg_iterations: int
    cg_residual: float  # ‖Hλ − ∂L/∂s‖ / ‖∂L/∂s‖ at exit
    active_fraction: float  # share of hidden units strictly inside their clipping box


def active_masks(net: HopfieldNetwork, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    alphas = net.alphas.tolist()
    masks = [((s > 0) & (s < a)).to(s.dtype) for s, a in zip(states[:-1], alphas, strict=True)]
    return [*masks, torch.ones_like(states[-1])]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((u * v).sum() for u, v in zip(a, b, strict=True))


def reference_gradients(
    net: HopfieldNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    free_states: Sequence[torch.Tensor],
    *,
    cost: str = "mse",
    tol: float = 1e-12,
    max_iterations: int = 20_000,
) -> ReferenceGradient:
    """∂L/∂θ, L = batch-mean cost of the output at the given (converged) free fixed point."""
    target = one_hot(y, net.num_classes, x.dtype)
    s = [t.detach().clone().requires_grad_(True) for t in free_states]
    masks = active_masks(net, s)
    with torch.enable_grad():
        # ∂Φ/∂s with a graph, reused for every Hessian-vector product and for the final θ-derivative.
        phi = net.phi(x, s).sum()
        dphi_ds = torch.autograd.grad(phi, s, create_graph=True)

        def hessian_vector(v: list[torch.Tensor]) -> list[torch.Tensor]:
            mv = [m * t for m, t in zip(masks, v, strict=True)]
            hv = torch.autograd.grad(dphi_ds, s, grad_outputs=mv, retain_graph=True, allow_unused=True)
            hv = [torch.zeros_like(t) if h is None else h for h, t in zip(hv, v, strict=True)]
            return [t - m * h for t, m, h in zip(v, masks, hv, strict=True)]

        o = s[-1]
        loss = cost_value(cost, o, target).mean()
        (dl_do,) = torch.autograd.grad(loss, o, retain_graph=True)
        rhs = [torch.zeros_like(t) for t in s[:-1]] + [dl_do.detach()]

        lam, iterations, residual = _conjugate_gradient(hessian_vector, rhs, tol, max_iterations)
        params = dict(net.named_parameters())
        weighted = _dot(dphi_ds, [m * t for m, t in zip(masks, lam, strict=True)])
        grads = torch.autograd.grad(weighted, list(params.values()), allow_unused=True)
    hidden = masks[:-1]
    active = sum(m.sum() for m in hidden) / sum(m.numel() for m in hidden)
    return ReferenceGradient(
        grads={
            n: (torch.zeros_like(p) if g is None else g.detach())
            for (n, p), g in zip(params.items(), grads, strict=True)
        },
        loss=loss.item(),
        cg_iterations=iterations,
        cg_residual=residual,
        active_fraction=float(active),
    )


def _conjugate_gradient(apply_h, rhs, tol, max_iterations):
    x = [torch.zeros_like(t) for t in rhs]
    r = [t.clone() for t in rhs]
    p = [t.clone() for t in r]
    rr = _dot(r, r)
    norm_b = rr.sqrt().clamp_min(torch.finfo(rhs[0].dtype).tiny)
    k = 0
    while k < max_iterations and (rr.sqrt() / norm_b).item() > tol:
        hp = [t.detach() for t in apply_h(p)]
        curvature = _dot(p, hp)
        if curvature.item() <= 0:
            raise RuntimeError(
                "the energy Hessian on the active set is not positive definite: the free state is not a "
                "strict minimum (relax longer or check the network)"
            )
        step = rr / curvature
        x = [a + step * b for a, b in zip(x, p, strict=True)]
        r = [a - step * b for a, b in zip(r, hp, strict=True)]
        rr_new = _dot(r, r)
        p = [a + (rr_new / rr) * b for a, b in zip(r, p, strict=True)]
        rr = rr_new
        k += 1
    return x, k, (rr.sqrt() / norm_b).item()
