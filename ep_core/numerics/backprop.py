"""Backprop baselines on the same graphs as the EP networks (the authors' `BackProp/` models).

* `resnet13` (BackProp/resnet.py `Resnet_13`): the Hopfield-ResNet13 graph run feed-forward; every edge is
  Conv2d (with bias) + BatchNorm2d, ReLU after each block half, the skip's BN output added before the ReLU.
* `vgg5_bp` (BackProp/vgg.py `VGG7Hopfield`): 4 × [conv3×3 (no bias) → BN → ReLU → max-pool 2], then dense;
  conv init kaiming-normal (fan_out, relu), BN weight 1 / bias 0.
Both take the same `width`, `in_channels`, `num_classes` and `input_size` as the EP networks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .networks import check_geometry, scaled_channels

BP_NETWORKS = ("resnet13", "vgg5_bp")
# The backprop networks' activation (plain ReLU, no cap), as their run directories and the tables name it.
BP_ACTIVATION = "relu"
# Each EP network's backprop twin: the same graph run feed-forward (the no-skip ablation shares ResNet13).
BP_TWIN = {"hopfield_resnet13": "resnet13", "hopfield_plain13": "resnet13", "vgg5": "vgg5_bp"}


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2), nn.BatchNorm2d(c_out))


class ResNet13(nn.Module):
    def __init__(
        self, *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width: float = 1.0
    ):
        super().__init__()
        check_geometry(in_channels, num_classes, input_size)
        self.arch = "resnet13"
        blocks, c_prev = [], in_channels
        for c in scaled_channels(width):
            blocks.append(
                nn.ModuleDict(
                    {
                        "main1": _conv_bn(c_prev, c, 3, 1),
                        "main2": _conv_bn(c, c, 3, 2),
                        "skip": _conv_bn(c_prev, c, 1, 2),
                    }
                )
            )
            c_prev = c
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c_prev * (input_size // 16) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.blocks:
            a = torch.relu(block["main1"](h))
            h = torch.relu(block["main2"](a) + block["skip"](h))
        return self.head(h.flatten(1))


class VGG5BP(nn.Module):
    def __init__(
        self, *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width: float = 1.0
    ):
        super().__init__()
        check_geometry(in_channels, num_classes, input_size)
        self.arch = "vgg5_bp"
        layers: list[nn.Module] = []
        c_prev = in_channels
        for c in scaled_channels(width):
            conv = nn.Conv2d(c_prev, c, 3, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            layers += [conv, nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_prev = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_prev * (input_size // 16) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


BUILDERS: dict[str, Callable[..., nn.Module]] = {"resnet13": ResNet13, "vgg5_bp": VGG5BP}


def build_bp_network(name: str, **kwargs) -> nn.Module:
    if name not in BUILDERS:
        raise ValueError(f"unknown backprop network {name!r}; valid choices: {', '.join(BUILDERS)}")
    return BUILDERS[name](**kwargs)
