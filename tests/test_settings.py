"""Every `ep.*` key reaches what uses it: the estimator an EPLearner builds, or the learner itself."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from ep_core.numerics.estimators import EquilibriumProp
from ep_core.numerics.networks import build_network
from ep_core.training.config import EPConfig, build_config, estimator_settings, resolve
from ep_core.training.learners import EPLearner
from ep_core.training.recipes import RECIPES

# For every estimator setting, a value other than its default that a tiny VGG5 accepts.
SETTINGS = {
    "estimator": "ep",
    "beta": 0.2,
    "free_iterations": 7,
    "nudge_iterations": 3,
    "order": "coloring",
    "omega": 0.9,
    "nudge_omega": 0.8,
    "cost": "cross_entropy",
    "clip_norm": None,
    "tol": 1e-3,
    "nudge_tol": 1e-2,
    "batch_phases": False,
    "solver": "anderson",
    "nudge_solver": "anderson",
    "anderson_memory": 3,
    "compile": True,
    "cuda_graphs": True,
    "chunk_size": 2,
    "bf16_sweeps": 5,
}
# The run's own keys, each read by the learner attribute of its name.
LEARNER_KEYS = {"eval_iterations": 7, "warm_start": False, "channels_last": True}
# Keys that change neither, each with what it does instead. `recipe` fills in other keys
# (test_a_recipe_reaches_the_keys_it_sets).
INERT = {
    "recipe": "sets other ep.* keys before the section is built",
    "auto_target": "read by the fidelity monitor of an ep.recipe: auto run (tests/test_fidelity.py)",
    "auto_floor": "read by the fidelity monitor of an ep.recipe: auto run (tests/test_fidelity.py)",
}


def _learner(ep: dict, collective=None) -> EPLearner:
    torch.manual_seed(0)
    net = build_network("vgg5", width=1 / 16, input_size=16)
    config = resolve(
        build_config({"data": {"name": "synthetic"}, "model": {"arch": "vgg5", "width": 1 / 16}, "ep": ep})
    )
    return EPLearner(net, config, collective)


def _used_value(learner: EPLearner, key: str):
    return getattr(learner.estimator if key in SETTINGS else learner, key)


def test_every_key_is_checked_here():
    keys = {f.name for f in dataclasses.fields(EPConfig)}
    assert keys == set(SETTINGS) | set(LEARNER_KEYS) | set(INERT)
    assert set(SETTINGS) == {f.name for f in dataclasses.fields(EquilibriumProp)}


@pytest.fixture(scope="module")
def default() -> EPLearner:
    return _learner({})


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_every_estimator_key_reaches_the_estimator(key, default):
    changed = _learner({key: SETTINGS[key]})
    assert getattr(changed.estimator, key) == SETTINGS[key] != getattr(default.estimator, key)
    # the key changed that setting and nothing else
    assert (
        dataclasses.replace(changed.estimator, **{key: getattr(default.estimator, key)}) == default.estimator
    )


@pytest.mark.parametrize("key", sorted(LEARNER_KEYS))
def test_every_run_key_reaches_the_learner(key, default):
    changed = _learner({key: LEARNER_KEYS[key]})
    assert getattr(changed, key) == LEARNER_KEYS[key] != getattr(default, key)
    assert changed.estimator == default.estimator


def test_channels_last_also_reformats_the_network():
    learner = _learner({"channels_last": True})
    conv = next(p for p in learner.net.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


@pytest.mark.parametrize("recipe", [name for name, keys in RECIPES.items() if keys])
def test_a_recipe_reaches_the_keys_it_sets(recipe, default):
    learner = _learner({"recipe": recipe})
    for key, value in RECIPES[recipe].items():
        assert _used_value(learner, key) == value != _used_value(default, key), key


def test_the_defaults_are_the_estimators_and_the_authors():
    # beta's default is "auto": on CIFAR-10 it resolves to the estimator's own default
    assert estimator_settings(resolve(build_config({})).ep) == EquilibriumProp()
    assert estimator_settings(resolve(build_config({"data": {"name": "digits"}})).ep).beta == 0.15


def test_a_data_parallel_shard_leaves_clipping_to_the_reduced_gradient():
    learner = _learner({"clip_norm": 0.5}, collective=SimpleNamespace(world_size=2))
    assert learner.estimator.clip_norm is None and learner.clip_norm == 0.5
    single = _learner({"clip_norm": 0.5}, collective=SimpleNamespace(world_size=1))
    assert single.estimator.clip_norm == 0.5
    assert dataclasses.replace(learner.estimator, clip_norm=0.5) == single.estimator
