"""Tables and figures from run directories and bench JSON, never from MLflow: the paper's table beside
ours, ablations, depth and hyper-parameter studies, convergence, gradient fidelity, profiles, weight
distributions.

Inputs are run directories written by `ep-core train --out DIR` and JSON files from `ep-core bench --json`;
every figure is written as PNG and PDF (same stem) and every table as CSV and markdown. Functions take data
frames built by the `load_*` functions, so each table or figure is a deterministic function of its files.
"""

from .ablations import ablation_table, plot_activation_ablation, plot_residual_ablation, write_ablation_table
from .convergence import convergence_traces, evaluation_batch, load_network, plot_convergence, residual_trace
from .depth import depth_table, plot_depth_ablation, write_depth_table
from .fidelity import fidelity_history, fidelity_table, load_fidelity, plot_fidelity, write_fidelity_table
from .profiles import (
    load_benchmarks,
    phase_times,
    plot_ep_vs_bp,
    plot_step_phases,
    profile_table,
    write_profile_table,
)
from .runs import load_history, load_runs
from .search import plot_search, search_table, write_search_table
from .tables import main_table, read_paper_results, write_table
from .weights import (
    load_weights,
    plot_weight_histograms,
    plot_weight_profiles,
    weight_layers,
    weight_table,
    write_weight_table,
)

__all__ = [
    "ablation_table",
    "convergence_traces",
    "depth_table",
    "evaluation_batch",
    "fidelity_history",
    "fidelity_table",
    "load_benchmarks",
    "load_fidelity",
    "load_history",
    "load_network",
    "load_runs",
    "load_weights",
    "main_table",
    "phase_times",
    "plot_activation_ablation",
    "plot_convergence",
    "plot_depth_ablation",
    "plot_ep_vs_bp",
    "plot_fidelity",
    "plot_residual_ablation",
    "plot_search",
    "plot_step_phases",
    "plot_weight_histograms",
    "plot_weight_profiles",
    "profile_table",
    "read_paper_results",
    "residual_trace",
    "search_table",
    "weight_layers",
    "weight_table",
    "write_ablation_table",
    "write_depth_table",
    "write_fidelity_table",
    "write_profile_table",
    "write_search_table",
    "write_table",
    "write_weight_table",
]
