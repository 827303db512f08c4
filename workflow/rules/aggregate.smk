# Tables and figures, on the submit host. Inputs are the runs' files, so Snakemake (not MLflow) decides
# what is stale; every function called here lives in ep_core.analysis. Only the rules the grid has are
# planned (grid.aggregations, common.smk's AGGREGATIONS): a study the grid lacks leaves no empty output.
rule main_table:
    input:
        metrics=run_files(MAIN, "metrics.json"),
        paper=PAPER,
    output:
        csv="results/tables/main.csv",
        md=report(
            "results/tables/main.md",
            caption="../report/main_table.rst",
            category="Paper table",
        ),
    log:
        "logs/aggregate/main_table.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/main_table.py"


rule ablations:
    input:
        metrics=run_files(RESIDUAL + ACTIVATION, "metrics.json"),
        history=run_files(RESIDUAL + ACTIVATION, "history.csv"),
    output:
        csv="results/tables/ablations.csv",
        md=report(
            "results/tables/ablations.md",
            caption="../report/ablations.rst",
            category="Ablations",
        ),
    log:
        "logs/aggregate/ablations.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/ablations.py"


rule residual_ablation:
    input:
        metrics=run_files(RESIDUAL, "metrics.json"),
        history=run_files(RESIDUAL, "history.csv"),
    output:
        figure=figure("residual_ablation", "residual_ablation", "Ablations"),
    log:
        "logs/aggregate/residual_ablation.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/residual_ablation.py"


rule activation_ablation:
    input:
        metrics=run_files(ACTIVATION, "metrics.json"),
        history=run_files(ACTIVATION, "history.csv"),
    output:
        figure=figure("activation_ablation", "activation_ablation", "Ablations"),
    log:
        "logs/aggregate/activation_ablation.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/activation_ablation.py"


rule depth:
    input:
        metrics=run_files(DEPTH, "metrics.json"),
        history=run_files(DEPTH, "history.csv"),
    output:
        csv="results/tables/depth.csv",
        md=report(
            "results/tables/depth.md",
            caption="../report/depth.rst",
            category="Depth study",
        ),
        figure=figure("depth_ablation", "depth_ablation", "Depth study"),
    log:
        "logs/aggregate/depth.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/depth.py"


rule search:
    input:
        metrics=run_files(SEARCH, "metrics.json"),
    output:
        csv="results/tables/search.csv",
        md=report(
            "results/tables/search.md",
            caption="../report/search.rst",
            category="Hyper-parameter searches",
        ),
        figure=figure("search", "search_figure", "Hyper-parameter searches"),
    log:
        "logs/aggregate/search.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        searched=grid.search_keys(config),
    script:
        "../scripts/search.py"


rule profiles:
    input:
        expand("results/profiles/{profile}.json", profile=PROFILES),
    output:
        csv="results/tables/profiles.csv",
        md=report(
            "results/tables/profiles.md",
            caption="../report/profiles.rst",
            category="Profiles",
        ),
        phases=figure("profile_phases", "profile_phases", "Profiles"),
        batch=figure("profile_batch_size", "profile_scaling", "Profiles"),
        width=figure("profile_width", "profile_scaling", "Profiles"),
        depth=figure("profile_depth", "profile_scaling", "Profiles"),
    log:
        "logs/aggregate/profiles.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        max_spread=config.get("profiles", {}).get("max_spread", 1.5),
    script:
        "../scripts/profiles.py"


rule weights:
    input:
        summaries=run_files(MAIN, "weights_summary.csv"),
        metrics=run_files(MAIN, "metrics.json"),
        pair=run_files([run for run in PAIR or [] if run], "weights_histograms.json"),
    output:
        csv="results/tables/weights.csv",
        md=report(
            "results/tables/weights.md",
            caption="../report/weights.rst",
            category="Weights",
        ),
        profiles=figure("weights_by_depth", "weights_by_depth", "Weights"),
        histograms=figure("weights_histograms", "weights_histograms", "Weights"),
    log:
        "logs/aggregate/weights.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/weights.py"


rule convergence:
    input:
        models=run_files(CONVERGENCE, "model.pt"),
    output:
        csv="results/convergence/traces.csv",
        figure=figure("convergence", "convergence", "Convergence"),
    log:
        "logs/aggregate/convergence.log",
    localrule: True
    conda:
        "../../environment.yml"
    params:
        iterations=config["convergence"]["iterations"],
        orders=config["convergence"]["orders"],
        batch_size=config["convergence"]["batch_size"],
        data_dir=config["data_dir"],
    script:
        "../scripts/convergence.py"


rule fidelity:
    input:
        metrics=run_files(FIDELITY, "metrics.json"),
        history=run_files(FIDELITY, "history.csv"),
    output:
        csv="results/tables/fidelity.csv",
        md=report(
            "results/tables/fidelity.md",
            caption="../report/fidelity.rst",
            category="Gradient fidelity",
        ),
        epochs="results/tables/fidelity_epochs.csv",
        figure=figure("fidelity", "fidelity_figure", "Gradient fidelity"),
    log:
        "logs/aggregate/fidelity.log",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/fidelity.py"
