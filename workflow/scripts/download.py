"""Rule download: fetch one torchvision dataset into the data directory (md5-verified by torchvision)."""

import sys

console = sys.stderr
sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.training.datasets import download

# The marker sits in the data directory: derive it from the output (no hard-coded prefix).
try:
    download(
        snakemake.wildcards.dataset,
        Path(snakemake.output[0]).parent,
        accept_present=snakemake.params.accept_present,
        accept_hint="set data_accept_present: true in the config",
    )
except ValueError as error:  # one line, in the log and on the console, as `ep-core download` says it
    for out in (sys.stderr, console):
        print(f"download {snakemake.wildcards.dataset}: error: {error}", file=out, flush=True)
    sys.exit(2)
