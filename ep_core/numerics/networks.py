"""Energy-based (Hopfield) networks by name: VGG5, Hopfield-ResNet13, its no-skip ablation, deeper ResNets.

A network is a graph: layer 0 is the clamped input x, layers 1..L are free states (L is the linear output),
and every edge is an `Interaction` (a bilinear coupling with its own weight). Weights and biases are
`nn.Parameter`s registered biases first, then weights in the authors' edge order, so parameter order and
optimizer groups match the authors' code; the clipped-ReLU caps α are a buffer, saved with the weights.
States are never stored here: they are tensors passed to and returned by `ep_core.numerics.relaxation`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .activations import AUTHORS_ALPHA_RANGE, draw_alphas
from .interactions import (
    ConvInteraction,
    ConvMaxPoolInteraction,
    DenseInteraction,
    Interaction,
    bias_phi,
)
from .naming import network_slug

BASE_CHANNELS = (128, 256, 512, 512)
VGG5_GAINS = (0.4, 0.7, 0.6, 0.3, 0.6)  # authors' dhcnresnet.py (upstream used 0.4 for the dense edge)
RESNET_MAIN_GAIN, RESNET_SKIP_GAIN, RESNET_DENSE_GAIN = 0.6, 0.7, 0.8


@dataclass(frozen=True)
class Layer:
    name: str
    shape: tuple[int, ...]  # per example, e.g. (C, H, W) or (n_out,)
    bias_fan: int  # bias init is U(±0.5/√bias_fan), the authors' per-layer rule


@dataclass(frozen=True)
class EdgeSpec:
    """What an edge is before its weight exists: built into an Interaction by `HopfieldNetwork`."""

    name: str
    pre: int
    post: int
    kind: str  # "conv", "conv_maxpool" or "dense"
    gain: float
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    skip: bool = False


class HopfieldNetwork(nn.Module):
    def __init__(
        self,
        arch: str,
        layers: Sequence[Layer],
        edges: Sequence[EdgeSpec],
        *,
        activation: str = "relu6",
        alpha_seed: int = 0,
        alpha_range: tuple[float, float] = AUTHORS_ALPHA_RANGE,
        gains: Sequence[float] | None = None,
    ):
        super().__init__()
        self.arch = arch
        self.activation = activation
        self.alpha_range = tuple(alpha_range)
        self.input_layer, *free = layers
        self.layers: list[Layer] = list(free)
        self.layer_names = [layer.name for layer in layers]
        if gains is not None:
            if len(gains) != len(edges):
                raise ValueError(f"gains: {arch} has {len(edges)} edges, got {len(gains)} gains")
            edges = [dataclasses.replace(e, gain=float(g)) for e, g in zip(edges, gains, strict=True)]
        self.edge_specs = list(edges)

        self.biases = nn.ParameterDict()
        for layer in self.layers:
            b = torch.empty(layer.shape[0])
            nn.init.uniform_(b, -0.5 / math.sqrt(layer.bias_fan), 0.5 / math.sqrt(layer.bias_fan))
            self.biases[layer.name] = nn.Parameter(b)
        self.edges = nn.ModuleDict({e.name: self._build_edge(e, layers) for e in self.edge_specs})
        self.register_buffer(
            "alphas", draw_alphas(activation, len(self.layers) - 1, seed=alpha_seed, alpha_range=alpha_range)
        )

        n = len(layers)
        self.incoming: list[list[Interaction]] = [[] for _ in range(n)]
        self.outgoing: list[list[Interaction]] = [[] for _ in range(n)]
        for edge in self.edges.values():
            self.incoming[edge.post].append(edge)
            self.outgoing[edge.pre].append(edge)

    @staticmethod
    def _build_edge(e: EdgeSpec, layers: Sequence[Layer]) -> Interaction:
        pre, post = layers[e.pre].shape, layers[e.post].shape
        if e.kind == "dense":
            return DenseInteraction(e.name, e.pre, e.post, pre, post, e.gain)
        if e.kind == "conv_maxpool":
            return ConvMaxPoolInteraction(e.name, e.pre, e.post, pre, post, e.gain)
        return ConvInteraction(e.name, e.pre, e.post, pre, post, e.gain, e.kernel, e.stride, e.padding)

    # --- shape facts -------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Free layers, the output included."""
        return len(self.layers)

    @property
    def in_channels(self) -> int:
        return self.input_layer.shape[0]

    @property
    def input_size(self) -> int:
        return self.input_layer.shape[1]

    @property
    def num_classes(self) -> int:
        return self.layers[-1].shape[0]

    def free_edges(self) -> list[tuple[int, int]]:
        """Couplings between free layers (1-based layer indices): the graph an update order must respect."""
        return [(e.pre, e.post) for e in self.edges.values() if e.pre > 0]

    def weight_parameters(self) -> dict[str, nn.Parameter]:
        return {f"edges.{name}.weight": edge.weight for name, edge in self.edges.items()}

    def check_input(self, x: torch.Tensor) -> None:
        expect = self.input_layer.shape
        if x.dim() != 1 + len(expect) or tuple(x.shape[1:]) != expect:
            raise ValueError(
                f"{self.arch} expects input of shape (B, {', '.join(map(str, expect))}), got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or infinite values")

    def zero_states(self, batch_size: int, *, device=None, dtype=None) -> list[torch.Tensor]:
        p = self.biases[self.layers[0].name]
        device, dtype = device or p.device, dtype or p.dtype
        return [torch.zeros(batch_size, *layer.shape, device=device, dtype=dtype) for layer in self.layers]

    # --- the energy (differentiable; for diagnostics, tests and the reference gradient) -----------------

    def phi(self, x: torch.Tensor, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Φ(x, s) per example, shape (B,)."""
        s = [x, *states]
        total = sum(bias_phi(self.biases[layer.name], s[k + 1]) for k, layer in enumerate(self.layers))
        for edge in self.edges.values():
            total = total + edge.phi(s[edge.pre], s[edge.post])
        return total

    def energy(self, x: torch.Tensor, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """E(x, s) = Σ_k ½‖s_k‖² − Φ(x, s) per example, shape (B,)."""
        quadratic = sum(0.5 * s.pow(2).flatten(1).sum(dim=1) for s in states)
        return quadratic - self.phi(x, states)

    def extra_repr(self) -> str:
        shapes = ", ".join(f"{layer.name}{layer.shape}" for layer in [self.input_layer, *self.layers])
        alphas = ", ".join(f"{a:.3g}" for a in self.alphas.tolist())
        return f"arch={self.arch}, activation={self.activation}, alphas=[{alphas}]\nlayers: {shapes}"


# --- builders ------------------------------------------------------------------------------------------


def scaled_channels(width: float) -> list[int]:
    """The four stages' channels, 128-256-512-512 times `width` (at least 1 each)."""
    if not (width > 0 and math.isfinite(width)):
        raise ValueError(f"width must be a positive number, got {width!r}")
    return [max(1, round(c * width)) for c in BASE_CHANNELS]


def check_geometry(in_channels: int, num_classes: int, input_size: int) -> None:
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if input_size < 16 or input_size % 16:
        raise ValueError(f"input_size must be a multiple of 16 (four 2x downsamplings), got {input_size}")


def vgg5(
    *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width: float = 1.0, **kwargs
) -> HopfieldNetwork:
    """The authors' VGG5 (`ConvHopfieldEnergy32`): four conv3×3 + 2×2 max-pool couplings and a dense head."""
    check_geometry(in_channels, num_classes, input_size)
    c = scaled_channels(width)
    size = input_size
    layers = [Layer("x", (in_channels, size, size), 0)]
    prev_c = in_channels
    for i, ch in enumerate(c, start=1):
        size //= 2
        layers.append(Layer(f"h{i}", (ch, size, size), prev_c * 9))
        prev_c = ch
    head_fan = math.prod(layers[-1].shape)
    layers.append(Layer("out", (num_classes,), head_fan))
    names = [layer.name for layer in layers]
    edges = [
        EdgeSpec(f"{names[i]}_to_{names[i + 1]}", i, i + 1, "conv_maxpool", VGG5_GAINS[i]) for i in range(4)
    ]
    edges.append(EdgeSpec(f"{names[4]}_to_out", 4, 5, "dense", VGG5_GAINS[4]))
    return HopfieldNetwork("vgg5", layers, edges, **kwargs)


def _stage_plan(blocks: int) -> list[int]:
    """Blocks per stage: one per stage up to four stages, extra blocks spread round-robin from stage 1."""
    per_stage = [1] * min(blocks, 4)
    for i in range(blocks - 4):
        per_stage[i % 4] += 1
    return per_stage


def hopfield_resnet(
    *,
    blocks: int = 4,
    skips: bool = True,
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    width: float = 1.0,
    arch: str | None = None,
    **kwargs,
) -> HopfieldNetwork:
    """Hopfield-ResNet: blocks of (3×3 conv in→a, 3×3 conv a→b, 1×1 skip in→b) couplings, then a dense head.

    The first block of each stage halves the resolution (stride-2 main conv and stride-2 1×1 skip); extra
    blocks in a stage keep it (stride 1 everywhere). `blocks=4` is exactly the authors' Hopfield-ResNet13;
    `skips=False` drops the skip couplings (the paper's residual ablation).
    """
    if not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
    check_geometry(in_channels, num_classes, input_size)
    c = scaled_channels(width)
    size = input_size
    layers = [Layer("x", (in_channels, size, size), 0)]
    edges: list[EdgeSpec] = []
    block_in, block_c = 0, in_channels
    index = 0
    for stage, count in enumerate(_stage_plan(blocks)):
        for j in range(count):
            index += 1
            stride = 2 if j == 0 else 1
            ch = c[stage]
            a, b = len(layers), len(layers) + 1
            layers.append(Layer(f"h{index}a", (ch, size, size), block_c * 9))
            size_b = size // stride
            layers.append(Layer(f"h{index}b", (ch, size_b, size_b), ch * 9))
            names = [layer.name for layer in layers]
            main1 = EdgeSpec(f"{names[block_in]}_to_{names[a]}", block_in, a, "conv", RESNET_MAIN_GAIN)
            main2 = EdgeSpec(f"{names[a]}_to_{names[b]}", a, b, "conv", RESNET_MAIN_GAIN, stride=stride)
            skip = EdgeSpec(
                f"{names[block_in]}_to_{names[b]}", block_in, b, "conv", RESNET_SKIP_GAIN, 1, stride, 0, True
            )
            # The authors list the first block's skip after its second conv, later blocks' before it.
            order = [main1, main2, skip] if index == 1 else [main1, skip, main2]
            edges.extend(e for e in order if skips or not e.skip)
            block_in, block_c, size = b, ch, size_b
    layers.append(Layer("out", (num_classes,), block_c * 9))
    edges.append(
        EdgeSpec(f"{layers[block_in].name}_to_out", block_in, len(layers) - 1, "dense", RESNET_DENSE_GAIN)
    )
    if arch is None:  # its one name (naming.network_slug): hopfield_resnet19, hopfield_plain19
        arch = network_slug("hopfield_resnet" if skips else "hopfield_plain", blocks)
    return HopfieldNetwork(arch, layers, edges, **kwargs)


def hopfield_resnet13(**kwargs) -> HopfieldNetwork:
    """The authors' Hopfield-ResNet13 (`ConvHopfieldResEnergy32`): 12 conv + 1 dense edges, 9 free states."""
    return hopfield_resnet(blocks=4, skips=True, arch="hopfield_resnet13", **kwargs)


def hopfield_plain13(**kwargs) -> HopfieldNetwork:
    """Hopfield-ResNet13 without its four skip couplings: the paper's residual ablation."""
    return hopfield_resnet(blocks=4, skips=False, arch="hopfield_plain13", **kwargs)


def hopfield_plain(blocks: int = 4, **kwargs) -> HopfieldNetwork:
    """`hopfield_resnet` with `blocks` blocks and no skip couplings: the depth ablation's no-skip twin."""
    return hopfield_resnet(blocks=blocks, skips=False, **kwargs)


NETWORKS: dict[str, Callable[..., HopfieldNetwork]] = {
    "vgg5": vgg5,
    "hopfield_resnet13": hopfield_resnet13,
    "hopfield_plain13": hopfield_plain13,
    "hopfield_resnet": hopfield_resnet,
    "hopfield_plain": hopfield_plain,
}


def build_network(name: str, **kwargs) -> HopfieldNetwork:
    """Build an energy-based network by name; keyword arguments go to its builder."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid choices: {', '.join(NETWORKS)}")
    return NETWORKS[name](**kwargs)
