"""The Snakemake workflow's logic: the job grid (studies → runs, profiles; `grid`), the command that
starts one run on N processes (`launch`) and the training job's log, whole across attempts (`joblog`). The
Snakefile asks these modules and nothing else.

Imports training and tracking; never bench, analysis or cli.
"""
