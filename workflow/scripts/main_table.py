"""Rule main_table: the paper's table with our accuracies beside the paper's."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import load_runs, main_table, write_table

runs = load_runs(Path(p).parent for p in snakemake.input.metrics)
write_table(main_table(runs, snakemake.input.paper), snakemake.output.csv, snakemake.output.md)
