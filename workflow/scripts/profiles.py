"""Rule profiles: time per training step by phase, and EP vs BP time and memory as the work grows."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from ep_core.analysis import (
    load_benchmarks,
    plot_ep_vs_bp,
    plot_step_phases,
    profile_table,
    write_profile_table,
)

bench = load_benchmarks(snakemake.input)
out = snakemake.output
limit = snakemake.params.max_spread  # repeats that disagree by more are flagged unsteady
write_profile_table(profile_table(bench, max_spread=limit), out.csv, out.md, max_spread=limit)
plot_step_phases(bench, out.phases[0], out.phases[1], max_spread=limit)
for axis, files in (("batch_size", out.batch), ("width", out.width), ("depth", out.depth)):
    plot_ep_vs_bp(bench, files[0], files[1], x=axis, max_spread=limit)
