"""The local terms of the primitive function Φ, each with closed-form gradients.

Convention (documented in the README): a network's energy per example is

    E(x, s) = Σ_k ½‖s_k‖² − Φ(x, s),     Φ = Σ_edges ⟨s_post, T(s_pre; W)⟩ + Σ_k ⟨b_k, s_k⟩,

and a layer update sets s_k ← clip(∂Φ/∂s_k, 0, α_k). Every edge below provides

* ``phi(s_pre, s_post)``       its contribution to Φ per example, shape (B,) — differentiable, used by tests,
                               diagnostics and the autograd reference gradient, never in the relaxation loop;
* ``drive_post(s_pre)``        ∂Φ_e/∂s_post (the feed-forward drive);
* ``drive_pre(s_post, s_pre)`` ∂Φ_e/∂s_pre  (the feedback drive);
  both optionally add a layer's bias inside the kernel (``bias=``; conv, transposed conv and the dense
  feed-forward drive), which saves the relaxation a pass over the layer;
* ``weight_grad(s_pre, s_post)`` Σ_batch ∂Φ_e/∂W (a Hebbian correlation; the caller divides by B).

The max-pool edge's feedback needs the pooling argmax of conv(s_pre); `drive_post` computes it anyway, so an
optional ``cache`` dict carries it over to `drive_pre` while s_pre is the very same tensor object (states are
never modified in place, so identity means "unchanged").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight


def _uniform_(param: torch.Tensor, half_width: float) -> None:
    with torch.no_grad():
        param.uniform_(-half_width, half_width)


class Interaction(nn.Module):
    """A bilinear coupling between layer `pre` and layer `post` (indices into the network's layer list,
    0 being the clamped input)."""

    kind = "interaction"

    def __init__(
        self, name: str, pre: int, post: int, pre_shape: tuple[int, ...], post_shape: tuple[int, ...]
    ):
        super().__init__()
        self.name = name
        self.pre = pre
        self.post = post
        self.pre_shape = tuple(pre_shape)
        self.post_shape = tuple(post_shape)

    def phi(self, s_pre: torch.Tensor, s_post: torch.Tensor) -> torch.Tensor:
        # drive_post *is* T(s_pre; W) and is differentiable (no cache): the definition of the term.
        return (s_post * self.drive_post(s_pre)).flatten(1).sum(dim=1)

    def extra_repr(self) -> str:
        return f"{self.name}: layer {self.pre} -> layer {self.post}, W {tuple(self.weight.shape)}"


class DenseInteraction(Interaction):
    """Φ_e = ⟨s_post, W · vec(s_pre)⟩, W of shape (n_out, n_in) with s_pre flattened channel-major."""

    kind = "dense"

    def __init__(self, name, pre, post, pre_shape, post_shape, gain: float):
        super().__init__(name, pre, post, pre_shape, post_shape)
        if len(self.post_shape) != 1:
            raise ValueError(f"dense edge {name}: post layer must be a vector, got shape {self.post_shape}")
        n_in = math.prod(self.pre_shape)
        self.weight = nn.Parameter(torch.empty(self.post_shape[0], n_in))
        _uniform_(self.weight, gain / math.sqrt(n_in))

    def drive_post(self, s_pre, cache=None, bias=None):
        if bias is not None:
            return torch.addmm(bias, s_pre.flatten(1), self.weight.t())
        return s_pre.flatten(1) @ self.weight.t()

    def drive_pre(self, s_post, s_pre, cache=None):
        return (s_post @ self.weight).view(s_post.shape[0], *self.pre_shape)

    def weight_grad(self, s_pre, s_post):
        return s_post.t() @ s_pre.flatten(1)


class ConvInteraction(Interaction):
    """Φ_e = ⟨s_post, conv2d(s_pre, W; stride, padding)⟩ — main-path convs and the 1×1 strided skips."""

    kind = "conv"

    def __init__(
        self, name, pre, post, pre_shape, post_shape, gain: float, kernel: int, stride: int, padding: int
    ):
        super().__init__(name, pre, post, pre_shape, post_shape)
        c_in, h_in, w_in = self.pre_shape
        c_out, h_out, w_out = self.post_shape
        self.stride, self.padding, self.kernel = stride, padding, kernel
        expect = ((h_in + 2 * padding - kernel) // stride + 1, (w_in + 2 * padding - kernel) // stride + 1)
        if expect != (h_out, w_out):
            raise ValueError(f"conv edge {name}: {self.pre_shape} gives {expect}, not {(h_out, w_out)}")
        # conv_transpose2d cannot infer which input size a strided conv came from: say it explicitly.
        self.output_padding = (
            h_in - ((h_out - 1) * stride - 2 * padding + kernel),
            w_in - ((w_out - 1) * stride - 2 * padding + kernel),
        )
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        _uniform_(self.weight, gain / math.sqrt(c_in * kernel * kernel))

    def drive_post(self, s_pre, cache=None, bias=None):
        return F.conv2d(s_pre, self.weight, bias, stride=self.stride, padding=self.padding)

    def drive_pre(self, s_post, s_pre, cache=None, bias=None):
        return F.conv_transpose2d(
            s_post, self.weight, bias, self.stride, self.padding, output_padding=self.output_padding
        )

    def weight_grad(self, s_pre, s_post):
        return conv2d_weight(s_pre, self.weight.shape, s_post, stride=self.stride, padding=self.padding)


class ConvMaxPoolInteraction(Interaction):
    """Φ_e = ⟨s_post, maxpool2×2(conv2d(s_pre, W; stride 1, pad 1))⟩ — VGG5's edges.

    Φ_e is piecewise bilinear: for fixed argmax indices it is bilinear, and with s_post ≥ 0 it is convex in
    s_pre, so the feedback drive (gradient at the current argmax) gives a majorise-minimise layer update.
    """

    kind = "conv_maxpool"

    def __init__(self, name, pre, post, pre_shape, post_shape, gain: float):
        super().__init__(name, pre, post, pre_shape, post_shape)
        c_in, h_in, w_in = self.pre_shape
        c_out, h_out, w_out = self.post_shape
        if h_in % 2 or w_in % 2 or (h_in // 2, w_in // 2) != (h_out, w_out):
            raise ValueError(f"conv+maxpool edge {name}: {self.pre_shape} cannot pool to {self.post_shape}")
        self.conv_shape = (h_in, w_in)
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 3, 3))
        _uniform_(self.weight, gain / math.sqrt(c_in * 9))

    def _pool(self, s_pre, cache, bias=None):
        # A per-channel bias is constant over a pooling window: pool(conv + b) = pool(conv) + b, same argmax.
        pooled, indices = F.max_pool2d(F.conv2d(s_pre, self.weight, bias, padding=1), 2, return_indices=True)
        if cache is not None:
            cache[self.name] = (s_pre, indices)
        return pooled, indices

    def argmax(self, s_pre, cache=None):
        """The 2×2 pooling argmax of conv(s_pre), reused from `cache` while s_pre is the same tensor."""
        if cache is not None:
            hit = cache.get(self.name)
            if hit is not None and hit[0] is s_pre:
                return hit[1]
        return self._pool(s_pre, cache)[1]

    def drive_post(self, s_pre, cache=None, bias=None):
        return self._pool(s_pre, cache, bias)[0]

    def unpool(self, s_post, s_pre, cache=None, indices=None):
        """s_post scattered back to the argmax positions of conv(s_pre) (zeros elsewhere); `indices`, when
        given, are that argmax already."""
        if indices is None:
            indices = self.argmax(s_pre, cache)
        return F.max_unpool2d(s_post, indices, 2, output_size=self.conv_shape)

    def drive_pre(self, s_post, s_pre, cache=None, bias=None):
        return F.conv_transpose2d(self.unpool(s_post, s_pre, cache), self.weight, bias, padding=1)

    def weight_grad(self, s_pre, s_post, indices=None):
        unpooled = self.unpool(s_post, s_pre, indices=indices)
        return conv2d_weight(s_pre, self.weight.shape, unpooled, padding=1)


# --- biases: Φ_b = ⟨b_k, s_k⟩ with one value per channel (broadcast over H, W) or per unit for vectors ---


def bias_view(bias: torch.Tensor, layer_shape: tuple[int, ...]) -> torch.Tensor:
    """∂Φ_b/∂s_k: the bias shaped to broadcast against a (B, *layer_shape) state."""
    return bias.view(1, -1, *([1] * (len(layer_shape) - 1)))


def bias_phi(bias: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (s * bias_view(bias, tuple(s.shape[1:]))).flatten(1).sum(dim=1)


def bias_grad(s: torch.Tensor) -> torch.Tensor:
    """Σ over the batch and all positions of s (the authors' convention: a sum, not a mean, over H·W)."""
    if s.dim() == 2:
        return s.sum(dim=0)
    return s.sum(dim=(0, *range(2, s.dim())))
