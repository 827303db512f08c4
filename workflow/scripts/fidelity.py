"""Rule fidelity: the cosine of each monitored run's gradient with the converged CEP gradient, by epoch."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import (
    fidelity_history,
    fidelity_table,
    load_fidelity,
    load_history,
    plot_fidelity,
    write_fidelity_table,
)

dirs = [Path(p).parent for p in snakemake.input.metrics]
out = snakemake.output
table = fidelity_table(load_fidelity(dirs))
epochs = fidelity_history(table, load_history(dirs))
write_fidelity_table(table, out.csv, out.md)
epochs.to_csv(out.epochs, index=False, lineterminator="\n")
plot_fidelity(table, epochs, out.figure[0], out.figure[1])
