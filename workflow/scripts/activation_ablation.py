"""Rule activation_ablation: test accuracy against epoch per activation (ReLU6 / ReLU1 / random alpha)."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import load_history, plot_activation_ablation

history = load_history(Path(p).parent for p in snakemake.input.metrics)
plot_activation_ablation(history, snakemake.output.figure[0], snakemake.output.figure[1])
