"""Rule ablations: residual (with vs without skips) and activation (ReLU6 / ReLU1 / random alpha)."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import (
    ablation_table,
    load_history,
    load_runs,
    plot_activation_ablation,
    plot_residual_ablation,
    write_ablation_table,
)

dirs = [Path(p).parent for p in snakemake.input.metrics]
runs, history = load_runs(dirs), load_history(dirs)
out = snakemake.output
plot_residual_ablation(history, out.residual[0], out.residual[1])
plot_activation_ablation(history, out.activation[0], out.activation[1])
write_ablation_table(ablation_table(runs, history), out.csv, out.md)
