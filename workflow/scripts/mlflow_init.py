"""Rule mlflow_init: create the tracking database, the experiment and this pipeline's parent run."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import datetime
import json
from pathlib import Path

from ep_core.tracking.parent import init_tracking
from ep_core.tracking.store import default_tracking_uri

root = Path(snakemake.output[0]).parent
uri = snakemake.params.tracking_uri or default_tracking_uri(root)
name = f"pipeline {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"
init = init_tracking(uri, snakemake.params.experiment, root / "artifacts", name)
Path(snakemake.output[0]).write_text(json.dumps(init, indent=2) + "\n")
print(f"MLflow: {uri}, experiment {init['experiment_id']}, parent run {init['parent_run_id']}")
