"""Rule download: fetch one torchvision dataset into the data directory (md5-verified by torchvision)."""

import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from pathlib import Path

from ep_core.training.datasets import download

# The marker sits in the data directory: derive it from the output (no hard-coded prefix).
download(snakemake.wildcards.dataset, Path(snakemake.output[0]).parent)
