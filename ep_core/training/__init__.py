"""One training run: its typed configuration, recipes, datasets, optimisers, learners, the resumable
loop, its gradient-fidelity monitor (and `ep.recipe: auto`'s choice of sweeps), checkpoints, the records
it leaves in its run directory, provenance, devices, data-parallel processes and SLURM's time-limit
warning (checkpoint, then requeue).

Builds on ep_core.numerics only. A run knows no grid (ep_core.pipeline), draws no figure and never
constructs an MLflow client: it is handed a tracker (`run.Mirror`) by whoever starts it.
"""
