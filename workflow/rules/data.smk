# Datasets are fetched once, on the submit host (compute nodes usually have no internet).


rule download:
    output:
        touch(f"{config['data_dir']}/.{{dataset}}.ready"),
    log:
        "logs/download/{dataset}.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/download.py"
