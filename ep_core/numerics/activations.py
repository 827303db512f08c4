"""Clipped-ReLU activations: ReLU_α(x) = min(max(x, 0), α), one cap α per hidden layer.

With the Hopfield energy E = Σ ½‖s_k‖² − Φ and each hidden state boxed to [0, α_k], the exact block
minimiser of E over s_k is clip(∂Φ/∂s_k, 0, α_k); so the activation *is* the box, and a network's
activation is fully described by the vector of caps α (one per hidden layer). The output layer is linear.
"""

from __future__ import annotations

import torch

ACTIVATIONS = ("relu6", "relu1", "relu_random")
# The paper's main results (its table, the weight findings) are EP networks with ReLU6.
PAPER_ACTIVATION = "relu6"

# The authors' code draws α ~ U(1, 10) with Python's unseeded `random`; the paper says [0, 10].
AUTHORS_ALPHA_RANGE = (1.0, 10.0)


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid choices: {', '.join(ACTIVATIONS)}")
    return name


def draw_alphas(
    name: str,
    num_hidden: int,
    *,
    seed: int = 0,
    alpha_range: tuple[float, float] = AUTHORS_ALPHA_RANGE,
) -> torch.Tensor:
    """The caps α of `num_hidden` hidden layers, float64 on the CPU.

    `relu_random` draws one α per layer from U(alpha_range) with a generator seeded by `seed`, so the same
    seed always gives the same caps and the caps are part of the model (a buffer in its state_dict).
    """
    check_activation(name)
    if name == "relu6":
        return torch.full((num_hidden,), 6.0, dtype=torch.float64)
    if name == "relu1":
        return torch.ones(num_hidden, dtype=torch.float64)
    lo, hi = (float(v) for v in alpha_range)
    if not (0.0 <= lo < hi):
        raise ValueError(f"alpha_range must satisfy 0 <= low < high, got {alpha_range!r}")
    generator = torch.Generator().manual_seed(int(seed))
    alphas = lo + (hi - lo) * torch.rand(num_hidden, generator=generator, dtype=torch.float64)
    # A cap of exactly 0 would pin a layer to zero; U[0, 10) makes it measure-zero but guard anyway.
    return alphas.clamp_min(1e-6)
