"""Costs C(o, y) on the output state o, per example, with their analytic gradient ∂C/∂o (the nudging force).

The output state is an ordinary linear layer of the energy; a cost only changes the force that pulls it
towards the target in the nudged phases (E + β·C). Cross-entropy treats o as logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COSTS = ("mse", "cross_entropy")


def check_cost(name: str) -> str:
    if name not in COSTS:
        raise ValueError(f"unknown cost {name!r}; valid choices: {', '.join(COSTS)}")
    return name


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(y, num_classes).to(dtype)


def cost_value(name: str, o: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example cost, shape (B,). `target` is one-hot, same shape as `o`."""
    if name == "mse":
        return 0.5 * (o - target).pow(2).sum(dim=1)
    if name == "cross_entropy":
        return -(target * F.log_softmax(o, dim=1)).sum(dim=1)
    raise ValueError(f"unknown cost {name!r}; valid choices: {', '.join(COSTS)}")


def cost_grad(name: str, o: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∂C/∂o per example, shape (B, n_out)."""
    if name == "mse":
        return o - target
    if name == "cross_entropy":
        return torch.softmax(o, dim=1) - target
    raise ValueError(f"unknown cost {name!r}; valid choices: {', '.join(COSTS)}")
