"""Real learning on real data: CEP and backprop on scikit-learn's digits reach the accuracies we promise.

Each run is CPU-sized (1/16 width; ~1.5 min for Hopfield-ResNet13, less for the others on 2 cores) and
uses configs/demo_digits.yaml, the file `make demo-run` trains (the pipeline demo uses the same settings).
"""

import json
from pathlib import Path

import pytest

from ep_core.training.config import load_config
from ep_core.training.run import train

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo_digits.yaml"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "minimum"),
    [
        ([], 93.0),  # CEP Hopfield-ResNet13
        (["model.arch=vgg5"], 93.0),  # CEP VGG5
        (["model.arch=resnet13", "optim.lr=null"], 95.0),  # backprop ResNet13, its own recipe (Adam 1e-3)
    ],
    ids=["cep-hopfield_resnet13", "cep-vgg5", "bp-resnet13"],
)
def test_digits_test_accuracy(tmp_path, overrides, minimum):
    out = tmp_path / "run"
    # Without the gradient-fidelity probes (a third of the run's time here): they never change the network
    # trained (tests/test_fidelity.py), so the accuracy is the file's.
    assert train(load_config(DEMO, [*overrides, "train.fidelity_every=0"]), out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["final"]["test_acc"] >= minimum, metrics["final"]
