"""Rule residual_ablation: training loss against epoch, Hopfield-ResNet13 with vs without its skips."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import load_history, plot_residual_ablation

history = load_history(Path(p).parent for p in snakemake.input.metrics)
plot_residual_ablation(history, snakemake.output.figure[0], snakemake.output.figure[1])
