# Datasets are fetched once, on the submit host (compute nodes usually have no internet).


rule download:
    output:
        touch(f"{config['data_dir']}/.{{dataset}}.ready"),
    log:
        "logs/download/{dataset}.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        accept_present=config["data_accept_present"],
    script:
        "../scripts/download.py"
