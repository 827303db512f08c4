"""Per-layer state diagnostics: activity, saturation, and whether two states share one active set.

EP's estimate is exact only in the limit β → 0 *within one smooth piece* of the dynamics: a nudge that
moves a hidden unit across a clip boundary (or flips a max-pool argmax) makes the finite-β estimate jump.
`pattern_changes` counts such flips so tests and `ep-core gradcheck` can tell a bias from a jump.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .interactions import ConvMaxPoolInteraction
from .networks import HopfieldNetwork


def clip_pattern(net: HopfieldNetwork, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per hidden layer, an int8 map: 0 inside the box, 1 clipped at 0, 2 clipped at α."""
    patterns = []
    for s, alpha in zip(states[:-1], net.alphas.tolist(), strict=True):
        patterns.append((s <= 0).to(torch.int8) + 2 * (s >= alpha).to(torch.int8))
    return patterns


def pool_indices(net: HopfieldNetwork, x: torch.Tensor, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    s = [x, *states]
    out = []
    with torch.no_grad():
        for edge in net.edges.values():
            if isinstance(edge, ConvMaxPoolInteraction):
                conv = F.conv2d(s[edge.pre], edge.weight, padding=1)
                out.append(F.max_pool2d(conv, 2, return_indices=True)[1])
    return out


def pattern_changes(
    net: HopfieldNetwork, x: torch.Tensor, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]
) -> int:
    """Number of hidden units whose clip state differs between `a` and `b`, plus max-pool windows whose
    argmax differs. Zero means both states lie on the same smooth piece of the energy."""
    clip = sum(
        int((pa != pb).sum()) for pa, pb in zip(clip_pattern(net, a), clip_pattern(net, b), strict=True)
    )
    pool = sum(
        int((ia != ib).sum()) for ia, ib in zip(pool_indices(net, x, a), pool_indices(net, x, b), strict=True)
    )
    return clip + pool


def layer_statistics(net: HopfieldNetwork, states: Sequence[torch.Tensor]) -> dict[str, float]:
    """Mean activity (mean |s|) of every free layer and, for hidden layers, the fraction of units at 0
    (`saturation_low`, the authors' 'Saturation') and at their cap α (`saturation_high`)."""
    stats: dict[str, float] = {}
    alphas = net.alphas.tolist()
    for k, (layer, s) in enumerate(zip(net.layers, states, strict=True)):
        stats[f"activity.{layer.name}"] = s.abs().mean().item()
        if k < len(alphas):
            stats[f"saturation_low.{layer.name}"] = (s <= 0).float().mean().item()
            stats[f"saturation_high.{layer.name}"] = (s >= alphas[k]).float().mean().item()
    return stats
