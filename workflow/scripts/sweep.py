"""Rule sweep: accuracy against each swept setting, and the setting chosen on validation."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import load_runs, plot_sweep, sweep_table, write_sweep_table

keys = list(snakemake.params.swept)
table = sweep_table(load_runs((Path(p).parent for p in snakemake.input.metrics), keys), keys)
write_sweep_table(table, keys, snakemake.output.csv, snakemake.output.md)
plot_sweep(table, keys, snakemake.output.figure[0], snakemake.output.figure[1])
