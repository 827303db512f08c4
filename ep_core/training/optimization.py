"""Optimizers and schedules with one parameter group per tensor, as in the authors' code.

Per-tensor learning rates and weight decays are lists in parameter order (biases first, then weights, for
the EP networks). Their length is checked against the parameters: the authors' code zipped 26 learning
rates against 22 tensors for Hopfield-ResNet13 and silently shifted them (authors-code-spec §4.4).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError, OptimConfig


def per_tensor(key: str, value: float | list[float], model: nn.Module) -> list[float]:
    names = [n for n, _ in model.named_parameters()]
    if isinstance(value, float | int):
        return [float(value)] * len(names)
    if len(value) != len(names):
        arch = getattr(model, "arch", type(model).__name__)
        raise ConfigError(
            f"{key}: {arch} has {len(names)} parameter tensors ({names[0]} ... {names[-1]}), "
            f"got {len(value)} values"
        )
    return [float(v) for v in value]


def build_optimizer(model: nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    lrs = per_tensor("optim.lr", o.lr, model)
    decays = per_tensor("optim.weight_decay", o.weight_decay, model)
    groups = [
        {"params": [p], "lr": lr, "weight_decay": wd, "name": name}
        for (name, p), lr, wd in zip(model.named_parameters(), lrs, decays, strict=True)
    ]
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=o.momentum, nesterov=o.nesterov)
    if o.optimizer == "adamw":  # the authors' --optimizer adam: decoupled decay
        return torch.optim.AdamW(groups, lr=lrs[0])
    return torch.optim.Adam(groups, lr=lrs[0])  # BackProp/resnet.py: coupled L2


def build_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig, epochs: int):
    """Stepped once per epoch, after training and before evaluation (the authors' order)."""
    if o.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=o.eta_min)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
