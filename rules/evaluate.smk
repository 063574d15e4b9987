rule cross_evaluate:
    input:
        secondaries=lambda wc: secondaries_of(wc.experiment, wc.variant),
        maps=lambda wc: zarr_store(
            all_maps_of(wc.experiment, experiment_methods(wc.experiment))
        ),
    output:
        table=CROSS_EVAL,
    params:
        methods=lambda wc: experiment_methods(wc.experiment),
        replicates=lambda wc: replicate_params(wc.experiment),
        target=lambda wc: experiment_target(config, wc.experiment),
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
        parts=[
            CROSS_EVAL.format(experiment=e, variant=v)
            for e in table_experiments()
            for v in experiment_variants(e)
        ],
        primaries=primary_metrics(),
    output:
        csv=report(
            f"{RESULTS}/tables/cross_evaluation.csv",
            category="Experiments",
            subcategory="Cross-evaluation",
            caption="../report/cross_evaluation.rst",
        ),
        markdown=f"{RESULTS}/tables/cross_evaluation.md",
        replicates=f"{RESULTS}/tables/cross_evaluation_replicates.csv",
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
