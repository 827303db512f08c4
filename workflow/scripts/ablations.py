"""Rule ablations: the table of the grid's residual (with vs without skips) and activation (ReLU6 / ReLU1 /
random alpha) ablations."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import ablation_table, load_history, load_runs, write_ablation_table

dirs = [Path(p).parent for p in snakemake.input.metrics]
write_ablation_table(
    ablation_table(load_runs(dirs), load_history(dirs)), snakemake.output.csv, snakemake.output.md
)
