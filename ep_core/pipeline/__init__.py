"""The Snakemake workflow's logic: the job grid (studies → runs, profiles; `grid`) and the command that
starts one run on N processes (`launch`). The Snakefile asks these modules and nothing else.

Imports training and tracking; never bench, analysis or cli.
"""
