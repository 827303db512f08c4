"""One name per network, and per MLflow metric, everywhere: tables, figures, legends, run directories,
MLflow tags and `metrics.json` all ask this module.

A network is an architecture plus, for the Hopfield-ResNet family, its number of blocks. Its *slug* is the
stable code name used in paths and tags (`hopfield_resnet19`); its *display name* is what a reader sees
("Hopfield-ResNet19 (6 blocks)"). A Hopfield-ResNet with N blocks has 3N + 1 weight layers as the paper
counts them (two 3×3 convs and one 1×1 skip per block, plus the dense head): N = 4 is exactly the authors'
Hopfield-ResNet13 (`networks.hopfield_resnet13` builds it so), and its no-skip twin is Hopfield-Plain13.
"""

from __future__ import annotations

import re
from typing import Any

# Architectures whose depth is set by `model.blocks`, and their fixed-depth names at the paper's 4 blocks.
BLOCK_ARCHS = {"hopfield_resnet": "hopfield_resnet13", "hopfield_plain": "hopfield_plain13"}
PAPER_BLOCKS = 4
FIXED_NAMES = {
    "vgg5": "VGG5",
    "vgg5_bp": "VGG5 (BP)",
    "resnet13": "ResNet13",
    "hopfield_resnet13": "Hopfield-ResNet13",
    "hopfield_plain13": "Hopfield-Plain13 (no skips)",
}
_FAMILY = re.compile(r"^hopfield_(resnet|plain)(\d+)$")


def layers_of(blocks: int) -> int:
    """Weight layers of a Hopfield-ResNet with `blocks` blocks, as in the name Hopfield-ResNet13."""
    return 3 * int(blocks) + 1


def canonical_network(arch: str, blocks: int | None = None) -> tuple[str, int | None]:
    """(arch, blocks) of the one identity of a network: a block-counted family at 4 blocks is the
    fixed-depth network (`hopfield_resnet` with 4 blocks is `hopfield_resnet13`); other networks have no
    block count."""
    if arch in BLOCK_ARCHS:
        n = PAPER_BLOCKS if blocks is None else int(blocks)
        return (BLOCK_ARCHS[arch], None) if n == PAPER_BLOCKS else (arch, n)
    return arch, None


def network_slug(arch: str, blocks: int | None = None) -> str:
    """The stable code name: `vgg5`, `hopfield_resnet13`, `hopfield_resnet19` (6 blocks), `hopfield_plain25`
    (8 blocks, no skips)."""
    arch, blocks = canonical_network(arch, blocks)
    return f"{arch}{layers_of(blocks)}" if blocks is not None else arch


def blocks_of(slug: str) -> int | None:
    """The number of blocks of a Hopfield-ResNet-family slug (`hopfield_resnet19` → 6), else None."""
    match = _FAMILY.match(slug)
    if match is None or (int(match.group(2)) - 1) % 3:
        return None
    return (int(match.group(2)) - 1) // 3


def skips_of(slug: str) -> bool | None:
    """True for the Hopfield-ResNet family, False for its no-skip twin, None for other networks."""
    match = _FAMILY.match(slug)
    return None if match is None else match.group(1) == "resnet"


def network_name(arch: str, blocks: int | None = None) -> str:
    """The display name: 'Hopfield-ResNet19 (6 blocks)', 'Hopfield-Plain19 (6 blocks, no skips)',
    'Hopfield-ResNet13', 'VGG5'. `arch` may also be a slug; an unknown name is returned as given."""
    slug = network_slug(arch, blocks)
    if slug in FIXED_NAMES:
        return FIXED_NAMES[slug]
    n = blocks_of(slug)
    if n is None:
        return slug
    if skips_of(slug):
        return f"Hopfield-ResNet{layers_of(n)} ({n} block{'s' * (n != 1)})"
    return f"Hopfield-Plain{layers_of(n)} ({n} block{'s' * (n != 1)}, no skips)"


def network_of_config(config: dict[str, Any]) -> str:
    """The slug of a run's network from its configuration (a `metrics.json` `config` or `config.yaml`)."""
    model = config["model"]
    return network_slug(model["arch"], model.get("blocks"))


# --- MLflow metric names -----------------------------------------------------------------------------------
# MLflow's UI groups charts by the part of a metric's name before '/', and lists unprefixed ones first: the
# accuracies and losses stay as history.csv names them, everything else goes to a group of its own.
HEADLINE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
RESOURCE_METRICS = ("lr", "peak_memory_mb")


def mlflow_metric_name(column: str) -> str:
    """`test_acc` → `test_acc`; `free_seconds`, `lr`, `peak_memory_mb` → `resources/…`; per-layer activity,
    saturation and relaxation statistics → `diagnostics/…`; a column that names its group (`fidelity/…`,
    `auto/…`) keeps it."""
    if "/" in column:
        return column
    if column in HEADLINE_METRICS:
        return column
    if column in RESOURCE_METRICS or column.endswith("_seconds"):
        return f"resources/{column}"
    return f"diagnostics/{column}"
