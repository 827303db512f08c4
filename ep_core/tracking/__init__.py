"""MLflow as a mirror of run directories: the store and its bounded calls (`store`), one run's mirror
and `ep-core sync` (`mirror`), the pipeline's parent run (`parent`).

Reads run directories through ep_core.training.rundir and never drives training; imports nothing from
pipeline, bench, analysis or cli.
"""
