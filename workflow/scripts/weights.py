"""Rule weights: EP-trained against BP-trained weights of the same graph, layer by layer."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import (
    load_weights,
    plot_weight_histograms,
    plot_weight_profiles,
    weight_table,
    write_weight_table,
)

weights = load_weights(Path(p).parent for p in snakemake.input.metrics)
out = snakemake.output
write_weight_table(weight_table(weights), out.csv, out.md)
plot_weight_profiles(weights, out.profiles[0], out.profiles[1])
pair = [Path(p).parent for p in snakemake.input.pair]  # the EP run, then its backprop twin if any
plot_weight_histograms(pair[0], pair[1] if len(pair) > 1 else None, out.histograms[0], out.histograms[1])
