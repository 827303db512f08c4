"""Rule depth: test accuracy and training-loss drop against depth, Hopfield-ResNets with vs without skips."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import depth_table, load_history, load_runs, plot_depth_ablation, write_depth_table

dirs = [Path(p).parent for p in snakemake.input.metrics]
table = depth_table(load_runs(dirs), load_history(dirs))
write_depth_table(table, snakemake.output.csv, snakemake.output.md)
plot_depth_ablation(table, snakemake.output.figure[0], snakemake.output.figure[1])
