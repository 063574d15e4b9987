rule cross_evaluate:
    input:
        secondaries=lambda wc: expand(
            f"{SECONDARY}/model.safetensors",
            experiment=wc.experiment,
            method=experiment_methods(wc.experiment),
            variant=wc.variant,
        ),
        maps=lambda wc: maps_of(wc.experiment, experiment_methods(wc.experiment)),
    output:
        table=CROSS_EVAL,
    params:
        methods=lambda wc: experiment_methods(wc.experiment),
        primaries=lambda wc: primary_names(wc.experiment),
        secondary=lambda wc: secondary_params(wc.experiment, [wc.variant]),
    log:
        f"{LOGS}/cross_evaluate/{{experiment}}/{{variant}}.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
        gpu=1,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/cross_evaluate.py"


rule combine_tables:
    input:
        [
            CROSS_EVAL.format(experiment=e, variant=v)
            for e in config["experiments"]
            for v in experiment_variants(e)
        ],
    output:
        csv=report(
            f"{RESULTS}/tables/cross_evaluation.csv",
            category="Cross-evaluation",
            caption="../report/cross_evaluation.rst",
        ),
        markdown=f"{RESULTS}/tables/cross_evaluation.md",
    log:
        f"{LOGS}/combine_tables.log",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 1000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/combine_tables.py"
