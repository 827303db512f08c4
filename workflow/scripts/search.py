"""Rule search: accuracy against each searched setting, and the setting chosen on validation."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import load_runs, plot_search, search_table, write_search_table

keys = list(snakemake.params.searched)
table = search_table(load_runs((Path(p).parent for p in snakemake.input.metrics), keys), keys)
write_search_table(table, keys, snakemake.output.csv, snakemake.output.md)
plot_search(table, keys, snakemake.output.figure[0], snakemake.output.figure[1])
