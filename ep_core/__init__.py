"""ep_core: deep Equilibrium Propagation in PyTorch — energy-based conv and residual Hopfield networks,
clipped-ReLU activations, relaxation to equilibrium, EP and centered-EP gradients, training runs.

The public API is what this module re-exports; see the README for a walk-through.
"""

from .bench.gradcheck import run_gradcheck
from .numerics.activations import ACTIVATIONS, draw_alphas
from .numerics.backprop import BP_NETWORKS, build_bp_network
from .numerics.costs import COSTS, cost_grad, cost_value
from .numerics.diagnostics import layer_statistic_names, layer_statistics, pattern_changes
from .numerics.estimators import EquilibriumProp, GradientEstimate
from .numerics.networks import NETWORKS, HopfieldNetwork, build_network
from .numerics.orders import ORDERS, update_groups
from .numerics.reference import reference_gradients
from .numerics.relaxation import Nudge, RelaxStats, fixed_point_residual, input_drive, predict, relax

__all__ = [
    "ACTIVATIONS",
    "BP_NETWORKS",
    "COSTS",
    "NETWORKS",
    "ORDERS",
    "EquilibriumProp",
    "GradientEstimate",
    "HopfieldNetwork",
    "Nudge",
    "RelaxStats",
    "build_bp_network",
    "build_network",
    "cost_grad",
    "cost_value",
    "draw_alphas",
    "fixed_point_residual",
    "input_drive",
    "layer_statistic_names",
    "layer_statistics",
    "pattern_changes",
    "predict",
    "reference_gradients",
    "relax",
    "run_gradcheck",
    "update_groups",
]
