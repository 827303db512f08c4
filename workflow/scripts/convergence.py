"""Rule convergence: relaxation residual against iteration of trained networks, per update order."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.analysis import convergence_traces, evaluation_batch, load_network, plot_convergence

p, out = snakemake.params, snakemake.output
runs = {Path(m).parent.relative_to("results/runs").as_posix(): Path(m).parent for m in snakemake.input.models}
networks = {name: load_network(d) for name, d in runs.items()}
batches = {name: evaluation_batch(d, p.batch_size, data_dir=p.data_dir) for name, d in runs.items()}
traces = convergence_traces(networks, batches, p.iterations, p.orders)
Path(out.csv).parent.mkdir(parents=True, exist_ok=True)
traces.to_csv(out.csv, index=False)
plot_convergence(traces, out.figure[0], out.figure[1], note="trained networks, a batch of test images")
