"""The mathematics of deep EP, on plain tensors: the bottom floor of ep_core.

Owns the interactions (local terms of the energy), activations, networks and their names, update orders,
the layer sweep, relaxation and its solvers (plain, Anderson, compiled and graphed phases, the bf16
bulk), costs, the EP / centered-EP estimators, the implicit-differentiation reference gradient, gradient
fidelity (a truncated estimate against the converged one), state
diagnostics, FLOP counts, and the backprop twins with the EP→BP pairing (`backprop.BP_TWIN`).

Imports nothing else from ep_core (training, tracking, pipeline, bench, analysis, cli), no MLflow and
no plotting; `make lint` enforces it.
"""
