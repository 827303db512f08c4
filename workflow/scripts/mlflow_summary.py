"""Rule mlflow_summary: send MLflow what it lacks of every run (`ep-core sync`: after an outage), close the
pipeline's parent run, and write what MLflow holds under it next to the runs' own metrics.json."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import json
from pathlib import Path

from ep_core.tracking import summarise_parent

init = json.loads(Path(snakemake.input.init).read_text())
summary = summarise_parent(init, [Path(p) for p in snakemake.input.metrics])
Path(snakemake.output[0]).write_text(json.dumps(summary, indent=2) + "\n")
