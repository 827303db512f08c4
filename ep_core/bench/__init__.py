"""Measurements: the training-step bench (`step`), time to accuracy of recipes (`tta`: its protocol, with
`tta_runs`, `tta_stats`, `tta_summary`, `tta_report`), the
data-parallel step (`ddp`), and gradient checks against the reference gradient (`gradcheck`).

Each returns plain data (dicts, JSON, formatted text); arguments are parsed by ep_core.cli. Imports
numerics, training and tracking; never pipeline, analysis or cli.
"""
