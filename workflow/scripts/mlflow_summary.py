"""Rule mlflow_summary: send MLflow what it lacks of every run (`ep-core sync`: after an outage), close the
pipeline's parent run, write what MLflow holds under it next to the runs' own metrics.json, and give the
parent run the run counts (completed / diverged / failed), the tables and the figures."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import json
from pathlib import Path

from ep_core.tracking.parent import log_to_parent, summarise_parent

init = json.loads(Path(snakemake.input.init).read_text())
summary = summarise_parent(init, [Path(p) for p in snakemake.input.metrics])
counts = log_to_parent(init, summary, [Path(p) for p in snakemake.input.aggregates], Path("results"))
print(f"parent run {init['parent_run_id']}: {counts}")
Path(snakemake.output[0]).write_text(json.dumps(summary, indent=2) + "\n")
