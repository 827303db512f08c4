"""One training run: its typed configuration, recipes, datasets, optimisers, learners, the resumable
loop, checkpoints, the records it leaves in its run directory, provenance, devices and data-parallel
processes.

Builds on ep_core.numerics only. A run knows no grid (ep_core.pipeline), draws no figure and never
constructs an MLflow client: it is handed a tracker (`run.Mirror`) by whoever starts it.
"""
