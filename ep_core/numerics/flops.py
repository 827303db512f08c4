"""Exact FLOP counts of EP and backprop steps, and the minimal kernel set one relaxation iteration needs —
the yardsticks `ep-core bench` measures the library's own iteration against."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .interactions import ConvMaxPoolInteraction, DenseInteraction, Interaction
from .networks import HopfieldNetwork

# --- exact FLOP counts ------------------------------------------------------------------------------------


def edge_macs(edge: Interaction) -> int:
    """Multiply-adds of one coupling's forward drive per example (its transposed drive costs the same)."""
    if isinstance(edge, DenseInteraction):
        return edge.weight.numel()
    c_out, c_in, kh, kw = edge.weight.shape
    if isinstance(edge, ConvMaxPoolInteraction):
        h, w = edge.conv_shape
    else:
        h, w = edge.post_shape[1:]
    return c_out * c_in * kh * kw * h * w


def iteration_flops(net: HopfieldNetwork) -> int:
    """FLOPs per example of one relaxation iteration: every coupling between free layers driven forward once
    and transposed once (the input's couplings are a constant drive, computed once per batch)."""
    return sum(4 * edge_macs(e) for e in net.edges.values() if e.pre > 0)


def ep_step_flops(net: HopfieldNetwork, batch: int, free_iterations: int, nudge_iterations: int) -> int:
    """FLOPs of a CEP training step: the input drive once, free and ±β iterations, the Hebbian terms of the
    two nudged states (a weight gradient costs the forward's multiply-adds)."""
    drive = sum(2 * edge_macs(e) for e in net.edges.values() if e.pre == 0)
    hebbian = sum(2 * edge_macs(e) for e in net.edges.values())
    iterations = free_iterations + 2 * nudge_iterations
    return batch * (drive + iteration_flops(net) * iterations + 2 * hebbian)


# --- the minimal kernel set -------------------------------------------------------------------------------


def minimal_kernel_set(net: HopfieldNetwork, x: torch.Tensor, states: list[torch.Tensor]) -> list[Callable]:
    """One call per kernel an iteration cannot avoid, on these states: each free coupling's forward drive
    (conv, conv + max-pool with its indices, matmul) and transposed drive (transposed conv, unpool with
    the indices already known + transposed conv, matmul). Bias, accumulation and clamp are not in it."""
    s = [x, *states]
    ops: list[Callable] = []
    for e in net.edges.values():
        if e.pre == 0:
            continue
        pre, post = s[e.pre], s[e.post]
        ops.append(lambda e=e, pre=pre: e.drive_post(pre))
        if isinstance(e, ConvMaxPoolInteraction):
            indices = e.argmax(pre)
            ops.append(lambda e=e, post=post, i=indices: _unpool_t(e, post, i))
        else:
            ops.append(lambda e=e, pre=pre, post=post: e.drive_pre(post, pre))
    return ops


def _unpool_t(e: ConvMaxPoolInteraction, post: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return F.conv_transpose2d(e.unpool(post, None, indices=indices), e.weight, padding=1)


def bp_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one backprop step (forward + backward, cross-entropy) by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()
